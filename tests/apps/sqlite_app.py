"""Worker app for the SQLite fault tests: a SQLiteBroker and actors that keep a ledger.

Configured by environment variables, so that ``taskflow worker
tests.apps.sqlite_app:broker`` runs it in real worker processes:

* ``TASKFLOW_TEST_SQLITE``: the broker's database file;
* ``TASKFLOW_TEST_LEDGER``: the ledger, a separate SQLite file outside the
  system under test, where every worker start and every actor run is recorded
  with its message id, delivery count and pid;
* ``TASKFLOW_TEST_VISIBILITY_TIMEOUT``: the lease, in seconds (default 2);
* ``TASKFLOW_TEST_WORKER``: a name for the worker, recorded in the ledger;
* ``TASKFLOW_TEST_MAX_DELIVERIES``: the delivery limit (default 3).

The broker leases for 2 s, reaps every 0.5 s and dead-letters after 3
deliveries. ``python -m tests.apps.sqlite_app produce COUNT TAG`` is a
producer process: it sends ``COUNT`` messages (half one by one, half with
``send_many``) and records each id in the ledger once its send returned.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from contextlib import closing
from typing import Any

import anyio

from taskflow import Middleware, Retry, Worker
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.middleware import current_delivery, current_message, default_middleware

PATH_ENV = "TASKFLOW_TEST_SQLITE"
LEDGER_ENV = "TASKFLOW_TEST_LEDGER"
LEASE_ENV = "TASKFLOW_TEST_VISIBILITY_TIMEOUT"
WORKER_ENV = "TASKFLOW_TEST_WORKER"
MAX_DELIVERIES_ENV = "TASKFLOW_TEST_MAX_DELIVERIES"

QUEUE = "faults"
VISIBILITY_TIMEOUT = 2.0
REAPER_INTERVAL = 0.5
MAX_DELIVERIES = 3

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    message_id TEXT, n INTEGER, delivery INTEGER, worker TEXT, pid INTEGER, event TEXT, at REAL
)
"""


def create_ledger(path: str) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(LEDGER_SCHEMA)


def record(event: str, n: int | None = None, *, message_id: str | None = None) -> None:
    """Append one row to the ledger (a no-op when no ledger is configured)."""
    ledger = os.environ.get(LEDGER_ENV)
    if not ledger:
        return
    delivery = current_delivery()
    if delivery is not None and message_id is None:
        message_id = delivery.message.id
    row = (
        message_id,
        n,
        delivery.delivery_count if delivery is not None else None,
        os.environ.get(WORKER_ENV, ""),
        os.getpid(),
        event,
        time.time(),
    )
    with closing(sqlite3.connect(ledger, timeout=30, isolation_level=None)) as conn:
        # A killed process loses nothing it wrote with WAL and synchronous=OFF; only a
        # machine crash could, and the ledger need not survive one.
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", row)


class WorkerStarts(Middleware):
    """Records each worker process's start in the ledger."""

    async def on_startup(self, worker: Worker) -> None:
        record("worker-start")


def build(
    path: str,
    *,
    visibility_timeout: float = VISIBILITY_TIMEOUT,
    max_deliveries: int = MAX_DELIVERIES,
) -> SQLiteBroker:
    """The broker of this app on ``path``, with its actors declared."""
    broker = SQLiteBroker(
        path,
        visibility_timeout=visibility_timeout,
        reaper_interval=REAPER_INTERVAL,
        max_deliveries=max_deliveries,
        middleware=[*default_middleware(), WorkerStarts()],
    )

    @broker.actor(queue=QUEUE, max_retries=0)
    async def sleepy(n: int, seconds: float) -> None:
        """Sleeps ``seconds`` on its first delivery only, so that redeliveries finish fast."""
        record("start", n)
        delivery = current_delivery()
        if delivery is not None and delivery.delivery_count == 1:
            await anyio.sleep(seconds)
        record("end", n)

    @broker.actor(queue=QUEUE, max_retries=0)
    async def steady(n: int, seconds: float) -> None:
        """Sleeps ``seconds`` on every delivery."""
        record("start", n)
        await anyio.sleep(seconds)
        record("end", n)

    @broker.actor(queue=QUEUE, max_retries=0)
    def sleepy_sync(n: int, seconds: float) -> None:
        record("start", n)
        time.sleep(seconds)
        record("end", n)

    @broker.actor(queue=QUEUE, max_retries=0)
    async def hog(n: int, seconds: float) -> None:
        """Blocks the event loop for ``seconds``."""
        record("start", n)
        time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop is what this actor is for
        record("end", n)

    @broker.actor(queue=QUEUE, max_retries=0)
    async def crash(n: int) -> None:
        """Kills its worker process outright."""
        record("start", n)
        os._exit(137)

    @broker.actor(queue=QUEUE, max_retries=3, min_backoff=0.1, max_backoff=0.2)
    async def chaos(n: int, fail_first: bool) -> None:
        """Runs a few ms; with ``fail_first``, asks to be retried on its first attempt."""
        record("start", n)
        await anyio.sleep(0.005 + (n % 7) * 0.005)
        message = current_message()
        if fail_first and message is not None and message.retries == 0:
            record("retry", n)
            raise Retry(delay=0.1)
        record("end", n)

    @broker.actor(queue=QUEUE, max_retries=0)
    async def add(x: int, y: int) -> int:
        record("end", x)
        return x + y

    return broker


broker = build(
    os.environ.get(PATH_ENV, "taskflow-test.sqlite3"),
    visibility_timeout=float(os.environ.get(LEASE_ENV, VISIBILITY_TIMEOUT)),
    max_deliveries=int(os.environ.get(MAX_DELIVERIES_ENV, MAX_DELIVERIES)),
)


async def produce(count: int, tag: str) -> None:
    """Send ``count`` messages to ``add``, recording each id once its send returned."""
    producer = build(os.environ[PATH_ENV])
    add: Any = producer.actors["add"]
    async with producer:
        half = count // 2
        for i in range(half):
            message = await add.send(i, 0)
            record("sent", i, message_id=message.id)
        for start in range(half, count, 50):
            batch = [(i, 0) for i in range(start, min(start + 50, count))]
            for message in await add.send_many(batch):
                record("sent", message.args[0], message_id=message.id)
    record(f"producer-done-{tag}")


if __name__ == "__main__" and sys.argv[1:2] == ["produce"]:
    anyio.run(produce, int(sys.argv[2]), sys.argv[3])
