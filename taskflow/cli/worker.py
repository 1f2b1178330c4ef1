"""``taskflow worker``: run workers in supervised child processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from taskflow.cli.config import SupervisorConfig, WorkerConfig
from taskflow.cli.errors import CliError
from taskflow.cli.metrics import require_prometheus
from taskflow.cli.reload import require_watchfiles
from taskflow.cli.runtime import LogFormat, LogLevel, reporting_errors

SUPERVISOR_MAIN = Path(__file__).with_name("_supervisor_main.py")

AppModules = Annotated[
    list[str],
    typer.Argument(
        metavar="MODULE[:BROKER]...",
        help=(
            "Where the broker is, e.g. 'app.tasks:broker' (a Broker or a callable returning "
            "one), and more modules to import for their actors: 'app.tasks app.more:broker'. "
            "The broker is the one given with ':BROKER', else the first module's 'broker'."
        ),
    ),
]


def worker(
    app: AppModules,
    include: Annotated[
        list[str] | None,
        typer.Option("--include", "-I", help="A module to import for its actors; repeat for more."),
    ] = None,
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues", "-Q", help="Comma-separated queues (default: the actors' queues)."
        ),
    ] = None,
    processes: Annotated[
        int, typer.Option("--processes", "-p", min=1, help="Worker processes.")
    ] = 1,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Messages in flight per process.")
    ] = 100,
    threads: Annotated[
        int, typer.Option("--threads", "-t", min=1, help="Threads for sync actors per process.")
    ] = 8,
    prefetch: Annotated[
        int | None, typer.Option(min=1, help="Messages fetched per round trip.")
    ] = None,
    shutdown_timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds running messages get to finish on stop.")
    ] = 30.0,
    watch: Annotated[
        Path | None,
        typer.Option(
            exists=True, help="Restart the workers when .py files under this path change."
        ),
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False)] = LogLevel.info,
    log_format: Annotated[
        LogFormat,
        typer.Option(case_sensitive=False, help="text lines, or one JSON object per line."),
    ] = LogFormat.text,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve Prometheus metrics of every worker process on this port (/metrics).",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address the metrics endpoint listens on.")
    ] = "0.0.0.0",
    metrics_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between samples of the queue depths.")
    ] = 10.0,
) -> None:
    """Run workers: a parent process supervising --processes worker processes.

    SIGTERM or SIGINT stops them gracefully; a second one (a second or more
    later) kills them at once. Exit status: 0 when every worker stopped
    cleanly, 1 otherwise, 2 when the broker cannot be loaded or reached.
    """
    with reporting_errors():
        spec, modules = split_modules(app, include or [])
        if watch is not None:
            require_watchfiles()
        if metrics_port is not None:
            require_prometheus()
    config = WorkerConfig(
        app=spec,
        include=tuple(modules),
        queues=tuple(q.strip() for q in (queues or "").split(",") if q.strip()),
        concurrency=concurrency,
        threads=threads,
        prefetch=prefetch,
        shutdown_timeout=shutdown_timeout,
        log_level=log_level.value,
        log_format=log_format.value,
        metrics=metrics_port is not None,
        metrics_interval=metrics_interval,
    )
    supervise(
        SupervisorConfig(
            worker=config,
            processes=processes,
            watch=_str(watch),
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
    )


def split_modules(app: list[str], include: list[str]) -> tuple[str, list[str]]:
    """Return the broker's spec and the other modules to import, from the command line.

    Raises:
        CliError: More than one module names a broker.
    """
    named = [spec for spec in app if ":" in spec]
    if len(named) > 1:
        raise CliError(f"name the broker once, not in {' and '.join(map(repr, named))}")
    spec = named[0] if named else app[0]
    modules = [m for m in (*app, *include) if m != spec]
    return spec, list(dict.fromkeys(modules))


def supervise(config: SupervisorConfig) -> NoReturn:
    """Become the supervisor: replace this process (same pid) with a small one.

    Nothing of typer and nothing of the application stays in memory for the
    life of the supervisor; see :mod:`taskflow.cli.supervisor`.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, str(SUPERVISOR_MAIN), config.to_json()])


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
