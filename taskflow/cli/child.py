"""A worker child process: one event loop, one :class:`taskflow.Worker`.

Started by the supervisor as ``python -m taskflow.cli.child CONFIG_JSON``. It
ignores SIGINT, so a Ctrl-C in the terminal reaches it only as the SIGTERM its
parent forwards, and it stops gracefully on SIGTERM, exiting 0. It also stops
when its parent disappears, so no worker outlives a killed supervisor.

Exit status: 0 after a graceful stop, 2 when the broker cannot be loaded, 3
when its server cannot be reached, 1 when the worker crashed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import NoReturn

import anyio
from anyio.abc import TaskStatus

from taskflow.broker import Broker
from taskflow.cli.config import WorkerConfig
from taskflow.cli.loading import CliError, load_broker
from taskflow.cli.metrics import instrument
from taskflow.cli.runtime import configure_logging, run_async
from taskflow.errors import BrokerError
from taskflow.worker import Worker

logger = logging.getLogger("taskflow.cli.child")

PARENT_CHECK_INTERVAL = 1.0
STUCK_THREAD_GRACE = 1.0

# A SIGTERM that comes while the child is still starting is remembered here
# and honoured once the worker runs, instead of killing the process.
_sigterm_while_starting = threading.Event()


def main(argv: list[str] | None = None) -> None:
    """Run a worker child from the JSON config in ``argv[0]``; exits the process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _remember_sigterm)
    config = WorkerConfig.from_json((argv or sys.argv[1:])[0])
    configure_logging(config.log_level, config.log_format)
    try:
        broker = load_broker(config.app)
    except CliError as exc:
        logger.error("%s", exc)
        sys.exit(2)
    if config.metrics:
        instrument(broker, config.metrics_interval)
    _exit(run_async(serve, broker, config))


async def serve(broker: Broker, config: WorkerConfig) -> int:
    """Run the worker until SIGTERM or the parent's death; return the exit status."""
    worker = Worker(
        broker,
        config.queues or None,
        concurrency=config.concurrency,
        threads=config.threads,
        prefetch=config.prefetch,
        shutdown_timeout=config.shutdown_timeout,
    )
    try:
        await _run_until_stopped(worker)
    except Exception as exc:
        return _report(exc)
    finally:
        with anyio.CancelScope(shield=True):
            await broker.close()
    return 0


def _exit(status: int) -> NoReturn:
    """Exit without waiting for sync actors the worker gave up on at shutdown.

    Their messages were requeued; their threads are not daemons, so a normal
    exit would wait for them forever.
    """
    deadline = time.monotonic() + STUCK_THREAD_GRACE
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(deadline - time.monotonic(), 0.0))
    stuck = sum(1 for t in threading.enumerate() if t.is_alive() and not t.daemon) - 1
    if stuck <= 0:
        sys.exit(status)
    logger.warning("leaving %d sync actor thread(s) behind at exit", stuck)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _remember_sigterm(signum: int, frame: FrameType | None) -> None:
    _sigterm_while_starting.set()


async def _run_until_stopped(worker: Worker) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(_stop_on_sigterm, worker)
        if _sigterm_while_starting.is_set():
            logger.info("received SIGTERM while starting; stopping gracefully")
            worker.stop()
        tg.start_soon(_stop_when_orphaned, worker, os.getppid())
        await worker.run()
        tg.cancel_scope.cancel()


def _report(exc: Exception) -> int:
    """Log why the worker ended and return the exit status that says so."""
    cause: BaseException = exc
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    if isinstance(cause, BrokerError | OSError):
        logger.error("worker failed: %s", cause)
        return 3
    logger.error("worker crashed", exc_info=cause)
    return 1


async def _stop_on_sigterm(worker: Worker, *, task_status: TaskStatus[None]) -> None:
    stopping = False
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            if stopping:
                logger.info("received SIGTERM again; already stopping")
            else:
                logger.info("received SIGTERM; stopping gracefully")
            stopping = True
            worker.stop()


async def _stop_when_orphaned(worker: Worker, parent: int) -> None:
    while os.getppid() == parent:
        await anyio.sleep(PARENT_CHECK_INTERVAL)
    logger.warning("parent process %d is gone; stopping", parent)
    worker.stop()


if __name__ == "__main__":
    main()
