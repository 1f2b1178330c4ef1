"""``taskflow worker``: run workers in supervised child processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskflow.broker import Broker
from taskflow.cli.config import WorkerConfig
from taskflow.cli.loading import load_broker
from taskflow.cli.metrics import MetricsServer, require_prometheus
from taskflow.cli.reload import require_watchfiles
from taskflow.cli.runtime import (
    AppSpec,
    LogFormat,
    LogLevel,
    configure_logging,
    connected,
    reporting_errors,
    run_async,
)
from taskflow.cli.supervisor import Supervisor


def worker(
    app: AppSpec,
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

    SIGTERM or SIGINT stops them gracefully; a second one kills them at once.
    Exit status: 0 when every worker stopped cleanly, 1 otherwise, 2 when the
    broker cannot be loaded or reached.
    """
    config = WorkerConfig(
        app=app,
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
    metrics = None
    with reporting_errors():
        if watch is not None:
            require_watchfiles()
        if metrics_port is not None:
            require_prometheus()
        run_async(_probe, load_broker(app), app)
        configure_logging(config.log_level, config.log_format)
        if metrics_port is not None:
            metrics = MetricsServer(metrics_host, metrics_port)
            metrics.start()
    supervisor = Supervisor(config, processes=processes, watch=watch, metrics=metrics)
    try:
        status = supervisor.run()
    finally:
        if metrics is not None:
            metrics.close()
    raise typer.Exit(status)


async def _probe(broker: Broker, spec: str) -> None:
    """Fail fast, before starting any child, when the broker's server cannot be reached."""
    async with connected(broker, spec):
        pass
