"""The parent of ``taskflow worker``: starts the worker children and keeps them running.

Each of the N slots runs one child at a time and starts a new one when it
dies, after a :class:`~taskflow.cli.backoff.Backoff` delay so a crash loop
does not spin. The first SIGTERM or SIGINT is forwarded to every child as
SIGTERM (a graceful stop); a second one, a second or more later, kills them
with SIGKILL at once (a repeat within :data:`~taskflow.cli._signals.ECHO_WINDOW`
is the same signal sent twice, see :mod:`taskflow.cli._signals`). The parent
exits 0 when every child stopped cleanly, 1 otherwise.

The supervisor is kept small: ``taskflow worker`` parses its options, then
replaces itself (same pid) with :mod:`taskflow.cli._supervisor_main`, which
runs this module without importing typer, the application or the rest of
taskflow. The application is imported only in child processes: first a
short-lived check (``taskflow.cli.child --check``) that fails the start with
one line and status 2 when the broker cannot be loaded or reached, then the
workers.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
from anyio.abc import Process, TaskGroup

from taskflow._redact import redact
from taskflow.cli._signals import ECHO_WINDOW, Arrival, StopSignals
from taskflow.cli.backoff import Backoff
from taskflow.cli.config import SupervisorConfig, WorkerConfig
from taskflow.cli.errors import CliError
from taskflow.cli.logs import configure_logging
from taskflow.cli.reload import watch_python_files

if TYPE_CHECKING:
    from taskflow.cli.metrics import MetricsServer

logger = logging.getLogger("taskflow.cli.supervisor")

KILL_GRACE = 10.0
"""Seconds past the shutdown timeout after which children still running are killed."""


class Supervisor:
    """Runs ``processes`` worker children with ``config`` and keeps them running.

    Args:
        config: What each child runs.
        processes: How many children run at once.
        watch: Restart the children when ``.py`` files under this path change.
        metrics: The server of the children's metrics, told when a child exits.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        processes: int = 1,
        watch: Path | None = None,
        metrics: MetricsServer | None = None,
    ) -> None:
        self.config = config
        self.processes = processes
        self.watch = watch
        self.metrics = metrics
        self._children: dict[int, Process] = {}
        self._generation = 0
        self._stop_requested: anyio.Event | None = None
        self._forced = False
        self._clean = True
        self._wakeup: anyio.Event | None = None
        self._tg: TaskGroup | None = None
        self._signals: StopSignals | None = None

    def run(self, signals: StopSignals | None = None) -> int:
        """Supervise until stopped by a signal; return the exit status.

        Args:
            signals: Stop signals received so far (default: start receiving now).
        """
        self._signals = signals or StopSignals((signal.SIGTERM, signal.SIGINT))
        return anyio.run(self._run)

    def _is_stopping(self) -> bool:
        return self._stop_requested is not None and self._stop_requested.is_set()

    async def _run(self) -> int:
        self._stop_requested = anyio.Event()
        self._wakeup = anyio.Event()
        assert self._signals is not None
        async with anyio.create_task_group() as self._tg:
            self._signals.attach(self._on_signal)
            if self.watch is not None:
                self._tg.start_soon(
                    watch_python_files, self.watch, self.reload, self._stop_requested
                )
            async with anyio.create_task_group() as slots:
                for index in range(1, self.processes + 1):
                    slots.start_soon(self._keep_running, index)
            self._tg.cancel_scope.cancel()
        self._signals.detach()
        logger.info("all children stopped")
        return 0 if self._clean and not self._forced else 1

    # -- signals and reloads -------------------------------------------------

    def _on_signal(self, signum: signal.Signals, arrival: Arrival) -> None:
        name = signum.name
        if not self._is_stopping():
            logger.info("received %s; stopping (send it again to kill at once)", name)
            self.stop()
        elif arrival is Arrival.ECHO:
            logger.info(
                "received %s again within %.0f s: the same signal, still stopping gracefully",
                name,
                ECHO_WINDOW,
            )
        else:
            logger.warning("received %s again; killing the children", name)
            self._kill_all()

    def stop(self) -> None:
        """Stop every child gracefully, killing those still running after the deadline."""
        assert self._stop_requested is not None and self._wakeup is not None
        assert self._tg is not None
        self._stop_requested.set()
        self._wakeup.set()
        self._signal_all(signal.SIGTERM)
        self._tg.start_soon(self._kill_after, self.config.shutdown_timeout + KILL_GRACE)

    def reload(self, changed: list[str]) -> None:
        """Restart every child gracefully (``changed`` lists the paths that triggered it)."""
        if self._is_stopping():
            return
        shown = ", ".join(changed[:3]) + (", ..." if len(changed) > 3 else "")
        logger.info("%s changed; restarting the children", shown)
        self._generation += 1
        assert self._wakeup is not None
        self._wakeup.set()
        self._wakeup = anyio.Event()
        self._signal_all(signal.SIGTERM)

    async def _kill_after(self, delay: float) -> None:
        await anyio.sleep(delay)
        logger.error("children still running %.1f s after SIGTERM; killing them", delay)
        self._clean = False
        self._kill_all()

    def _kill_all(self) -> None:
        self._forced = True
        self._signal_all(signal.SIGKILL)

    def _signal_all(self, signum: signal.Signals) -> None:
        for process in list(self._children.values()):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    # -- children ------------------------------------------------------------

    async def _keep_running(self, index: int) -> None:
        backoff = Backoff()
        while not self._is_stopping():
            generation = self._generation
            started = anyio.current_time()
            pid, status = await self._run_child(index)
            if self._is_stopping():
                # Killed by SIGTERM: stopped before it could install its handler, so before work.
                self._clean &= status in (0, -signal.SIGTERM)
            elif generation != self._generation:
                backoff.reset()
            else:
                delay = backoff.next_delay(anyio.current_time() - started)
                logger.warning(
                    "child %d (pid %d) %s; restarting it in %.2f s",
                    index,
                    pid,
                    describe_status(status),
                    delay,
                )
                await self._pause(delay)
                self._clean &= not self._is_stopping()

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if a stop or a reload comes first."""
        assert self._wakeup is not None
        with anyio.move_on_after(delay):
            await self._wakeup.wait()

    async def _run_child(self, index: int) -> tuple[int, int]:
        command = [sys.executable, "-m", "taskflow.cli.child", self.config.to_json()]
        process = await anyio.open_process(
            command, stdin=subprocess.DEVNULL, stdout=None, stderr=None
        )
        self._children[index] = process
        logger.info("started child %d (pid %d)", index, process.pid)
        if self._forced:
            process.kill()
        elif self._is_stopping():
            process.terminate()
        try:
            async with process:
                status = await process.wait()
        finally:
            del self._children[index]
            if self.metrics is not None:
                self.metrics.child_exited(process.pid)
        if self._is_stopping():
            logger.info("child %d (pid %d) %s", index, process.pid, describe_status(status))
        return process.pid, status


def describe_status(status: int) -> str:
    """Describe a child's exit status as a phrase, e.g. ``was killed by SIGKILL``."""
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def check_app(config: WorkerConfig) -> int:
    """Load the application and reach its broker in a short-lived child; return its status.

    The child prints what went wrong as one line on stderr and exits 2.
    """
    command = [sys.executable, "-m", "taskflow.cli.child", "--check", config.to_json()]
    return subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode


def main(argv: list[str]) -> int:
    """Check the application, then supervise; ``argv[0]`` is a :class:`SupervisorConfig` as JSON.

    Returns:
        The exit status: that of the check when it failed, else :meth:`Supervisor.run`'s.
    """
    config = SupervisorConfig.from_json(argv[0])
    # Signals that come during the check are kept and honoured once the children run.
    signals = StopSignals((signal.SIGTERM, signal.SIGINT))
    status = check_app(config.worker)
    if status < 0 and signals.first_at is not None:
        return 0  # stopped while checking (the signal reached the check too): nothing ran
    if status != 0:
        return status if status > 0 else 1  # < 0: the check was killed by a signal
    configure_logging(config.worker.log_level, config.worker.log_format)
    watch = Path(config.watch) if config.watch is not None else None
    metrics = _serve_metrics(config)
    if metrics is False:
        return 2
    supervisor = Supervisor(config.worker, processes=config.processes, watch=watch, metrics=metrics)
    try:
        return supervisor.run(signals)
    finally:
        if metrics is not None:
            metrics.close()


def _serve_metrics(config: SupervisorConfig) -> MetricsServer | None | Literal[False]:
    """Start the metrics endpoint when asked; ``False`` (said in one line) when it cannot."""
    if config.metrics_port is None:
        return None
    from taskflow.cli.metrics import MetricsServer

    metrics = MetricsServer(config.metrics_host, config.metrics_port)
    try:
        metrics.start()
    except CliError as exc:
        print(f"Error: {redact(str(exc))}", file=sys.stderr, flush=True)
        return False
    return metrics
