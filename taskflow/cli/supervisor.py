"""The parent of ``taskflow worker``: starts the worker children and keeps them running.

Each of the N slots runs one child at a time and starts a new one when it
dies, after a :class:`~taskflow.cli.backoff.Backoff` delay so a crash loop
does not spin. The first SIGTERM or SIGINT is forwarded to every child as
SIGTERM (a graceful stop); a second one kills them with SIGKILL at once. The
parent exits 0 when every child stopped cleanly, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import Process, TaskGroup, TaskStatus

from taskflow.cli.backoff import Backoff
from taskflow.cli.config import WorkerConfig
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

    def run(self) -> int:
        """Supervise until stopped by a signal; return the exit status."""
        return anyio.run(self._run)

    def _is_stopping(self) -> bool:
        return self._stop_requested is not None and self._stop_requested.is_set()

    async def _run(self) -> int:
        self._stop_requested = anyio.Event()
        self._wakeup = anyio.Event()
        async with anyio.create_task_group() as self._tg:
            await self._tg.start(self._handle_signals)
            if self.watch is not None:
                self._tg.start_soon(
                    watch_python_files, self.watch, self.reload, self._stop_requested
                )
            async with anyio.create_task_group() as slots:
                for index in range(1, self.processes + 1):
                    slots.start_soon(self._keep_running, index)
            self._tg.cancel_scope.cancel()
        logger.info("all children stopped")
        return 0 if self._clean and not self._forced else 1

    # -- signals and reloads -------------------------------------------------

    async def _handle_signals(self, *, task_status: TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if self._is_stopping():
                    logger.warning("received %s again; killing the children", name)
                    self._kill_all()
                else:
                    logger.info("received %s; stopping (send it again to kill at once)", name)
                    self.stop()

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
