"""The SQLite target of the chaos run (``tests/apps/chaos.py``, ``benchmarks/chaos.py``).

``broker`` is the worker app: a SQLiteBroker on the file named by
``TASKFLOW_CHAOS_SQLITE`` (2 s leases, reaper every 0.5 s) with the two
actors the run sends to, on queue ``work``, each appending ledger lines
``<id> <delivery count> <pid> <event> <unix time>`` to a file per process in
the directory ``TASKFLOW_CHAOS_LEDGER``. SQLite has no server to restart;
its server fault is another process holding the file's write lock for two
seconds, which every worker and the producer must wait out.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import anyio

from taskflow import Middleware, Retry, Worker, current_message
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.middleware import current_delivery, default_middleware
from tests.apps.cli_app import mark

PATH_ENV = "TASKFLOW_CHAOS_SQLITE"
LEDGER_ENV = "TASKFLOW_CHAOS_LEDGER"
QUEUE = "work"
LOCK_SECONDS = 2.0

Row = tuple[str, int, int, str, float]


def ledger(event: str) -> None:
    """Append ``<id> <delivery count> <pid> <event> <unix time>`` for the current message."""
    directory = os.environ.get(LEDGER_ENV)
    delivery = current_delivery()
    if not directory or delivery is None:
        return
    line = f"{delivery.message.id} {delivery.delivery_count} {os.getpid()} {event} {time.time()}\n"
    fd = os.open(Path(directory) / f"{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_ledger(directory: Path) -> list[Row]:
    """All ledger lines of all processes, oldest first."""
    rows = []
    for path in directory.glob("*.log"):
        for line in path.read_text().splitlines():
            mid, count, pid, event, at = line.split(" ")
            rows.append((mid, int(count), int(pid), event, float(at)))
    return sorted(rows, key=lambda r: r[4])


class Markers(Middleware):
    """Leaves ``started-<pid>`` / ``stopped-<pid>`` files for ``tests.cli.procs.WorkerCli``."""

    async def on_startup(self, worker: Worker) -> None:
        mark("started")

    async def on_shutdown(self, worker: Worker) -> None:
        mark("stopped")


def build(path: str) -> SQLiteBroker:
    """The chaos app's broker on ``path``, with its actors."""
    b = SQLiteBroker(
        path,
        visibility_timeout=2.0,
        reaper_interval=0.5,
        # Kills charge deliveries; the limit is for poison, which the run has none of.
        max_deliveries=50,
        middleware=[*default_middleware(), Markers()],
    )

    @b.actor(queue=QUEUE, max_retries=0, time_limit=None)
    async def record(ms: int = 0) -> None:
        """Sleep ``ms`` milliseconds, with ledger lines."""
        ledger("start")
        if ms:
            await anyio.sleep(ms / 1000)
        ledger("done")

    @b.actor(queue=QUEUE, max_retries=3, time_limit=None)
    async def flaky_once() -> None:
        """Ask to be retried (in 0.3 s) on the first attempt; complete on the next."""
        ledger("start")
        message = current_message()
        assert message is not None
        if message.retries == 0:
            ledger("retry")
            raise Retry(delay=0.3)
        ledger("done")

    return b


broker = build(os.environ.get(PATH_ENV, "taskflow-chaos.sqlite3"))


def hold_write_lock(path: Path, seconds: float) -> None:
    """Take the file's write lock from a connection of this process for ``seconds``."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")


class SQLiteChaos:
    """The broker file, the worker app's environment and the file-lock fault."""

    app = "tests.apps.sqlite_chaos:broker"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "broker.sqlite3"
        self.ledger = directory / "ledger"
        self.ledger.mkdir()
        self.env = {PATH_ENV: str(self.path), LEDGER_ENV: str(self.ledger)}
        self.broker = build(str(self.path))
        self.server_faults: dict[str, Callable[[], Awaitable[None]]] = {
            f"write lock held {LOCK_SECONDS:.0f} s by another connection": self.lock
        }

    async def lock(self) -> None:
        """Hold the write lock for two seconds (every writer waits), then let go."""
        thread = threading.Thread(target=hold_write_lock, args=(self.path, LOCK_SECONDS))
        thread.start()
        await anyio.to_thread.run_sync(thread.join)

    def rows(self) -> list[Row]:
        return read_ledger(self.ledger)

    def close(self) -> None:
        """Nothing runs apart from the workers; the directory goes with the run's."""


def chaos_target(directory: Path) -> SQLiteChaos:
    """The SQLite target of ``tests.apps.chaos``."""
    return SQLiteChaos(directory)
