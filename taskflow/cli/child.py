"""A worker child process: one event loop, one :class:`taskflow.Worker`.

Started by the supervisor as ``python -m taskflow.cli.child CONFIG_JSON``. It
ignores SIGINT, so a Ctrl-C in the terminal reaches it only as the SIGTERM its
parent forwards, and it stops gracefully on SIGTERM, exiting 0; further
SIGTERMs (the echo of a signal sent to the whole process group, say) never
interrupt that stop. It also stops when its parent disappears, so no worker
outlives a killed supervisor. At start it warns about every queue it consumes
that no actor of the loaded modules is declared on.

``python -m taskflow.cli.child --check CONFIG_JSON`` only loads the
application and connects to its broker: the supervisor's check before it
starts any worker. It prints what went wrong as one line and exits 2.

A child whose sync actor is stuck in a call past its time limit and grace
(see :mod:`taskflow._threads`) stops gracefully and exits with status 4, so
that its supervisor replaces it with a process whose threads are all free.

Exit status: 0 after a graceful stop, 2 when the broker cannot be loaded, 3
when its server cannot be reached, 4 after a recycle for a stuck sync actor,
1 when the worker crashed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import NoReturn

import anyio

from taskflow._redact import redact
from taskflow.broker import Broker
from taskflow.cli._signals import Arrival, StopSignals
from taskflow.cli.aio import connected, run_async
from taskflow.cli.config import WorkerConfig
from taskflow.cli.loading import CliError, import_modules, load_broker
from taskflow.cli.logs import configure_logging
from taskflow.cli.metrics import instrument
from taskflow.errors import BrokerError
from taskflow.worker import Worker

logger = logging.getLogger("taskflow.cli.child")

PARENT_CHECK_INTERVAL = 1.0
RECYCLED = 4
STUCK_THREAD_GRACE = 1.0


def main(argv: list[str] | None = None) -> None:
    """Run a worker child from the JSON config in ``argv[0]``; exits the process."""
    args = argv if argv is not None else sys.argv[1:]
    if args[0] == "--check":
        sys.exit(check(WorkerConfig.from_json(args[1])))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A SIGTERM that comes while the child is still starting is kept and
    # honoured once the worker runs, instead of killing the process.
    signals = StopSignals((signal.SIGTERM,))
    config = WorkerConfig.from_json(args[0])
    configure_logging(config.log_level, config.log_format)
    try:
        broker = load(config)
    except CliError as exc:
        logger.error("%s", exc)
        sys.exit(2)
    if config.metrics:
        instrument(broker, config.metrics_interval)
    warn_unserved_queues(broker, config)
    _exit(run_async(serve, broker, config, signals))


def load(config: WorkerConfig) -> Broker:
    """Load the broker, then import the other modules for their actors.

    Raises:
        CliError: A module cannot be imported or the broker cannot be found.
    """
    broker = load_broker(config.app)
    import_modules(config.include)
    return broker


def check(config: WorkerConfig) -> int:
    """Load the application and connect to its broker; print a failure as one line.

    Returns:
        0 when the worker can start, 2 otherwise.
    """
    try:
        run_async(_connect, load(config), config.app)
    except CliError as exc:
        print(f"Error: {redact(str(exc))}", file=sys.stderr, flush=True)
        return 2
    return 0


async def _connect(broker: Broker, spec: str) -> None:
    async with connected(broker, spec):
        pass


def warn_unserved_queues(broker: Broker, config: WorkerConfig) -> None:
    """Warn about each queue the worker will consume that no loaded actor is declared on."""
    consumed = list(config.queues) or broker.queues or ["default"]
    served = {actor.queue for actor in broker.actors.values()}
    unserved = [queue for queue in consumed if queue not in served]
    if not unserved:
        return
    modules = ", ".join((config.app.partition(":")[0], *config.include))
    declared = ", ".join(sorted(served)) or "none"
    logger.warning(
        "no actor for queue(s) %s in %s (%d actor(s) declared; their queues: %s); "
        "messages there will be dead-lettered as unknown actors",
        ", ".join(unserved),
        modules,
        len(broker.actors),
        declared,
    )


async def serve(broker: Broker, config: WorkerConfig, signals: StopSignals) -> int:
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
        await _run_until_stopped(worker, signals)
    except Exception as exc:
        return _report(exc)
    finally:
        signals.detach()
        with anyio.CancelScope(shield=True):
            await broker.close()
    return RECYCLED if worker.stuck_threads else 0


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


async def _run_until_stopped(worker: Worker, signals: StopSignals) -> None:
    async with anyio.create_task_group() as tg:
        # A SIGTERM received while starting is handed over now, and stops the worker at once.
        signals.attach(lambda signum, arrival: _on_sigterm(worker, arrival))
        tg.start_soon(_watch, worker, os.getppid())
        await worker.run()
        tg.cancel_scope.cancel()


def _on_sigterm(worker: Worker, arrival: Arrival) -> None:
    if arrival is Arrival.FIRST:
        logger.info("received SIGTERM; stopping gracefully")
    else:
        logger.info("received SIGTERM again; already stopping")
    worker.stop()


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


async def _watch(worker: Worker, parent: int) -> None:
    """Stop when the parent is gone, or when a sync actor got stuck (to be replaced)."""
    while os.getppid() == parent:
        if worker.stuck_threads:
            logger.error(
                "a sync actor is stuck in a call past its time limit; "
                "stopping so that this worker process is replaced"
            )
            worker.stop()
            return
        await anyio.sleep(PARENT_CHECK_INTERVAL)
    logger.warning("parent process %d is gone; stopping", parent)
    worker.stop()


if __name__ == "__main__":
    main()
