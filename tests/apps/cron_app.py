"""Worker app for the cron tests: one schedule every 2 s, each run written to a ledger.

Configured by environment variables so that ``taskflow worker
tests.apps.cron_app:broker`` runs it in real worker processes:

* ``TASKFLOW_TEST_CRON_AMQP`` with ``TASKFLOW_TEST_CRON_REDIS``: a RabbitMQ
  broker whose result backend (where fire times are claimed) is Redis;
* ``TASKFLOW_TEST_CRON_REDIS`` / ``TASKFLOW_TEST_CRON_NAMESPACE``: a Redis
  broker on that URL and namespace; otherwise
* ``TASKFLOW_TEST_CRON_SQLITE``: a SQLite broker on that file;
* ``TASKFLOW_TEST_CRON_LEDGER``: a SQLite file outside the system under test
  where each run of ``tick`` is a row (message id, enqueued at, pid).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

from taskflow import Broker, current_message
from taskflow.brokers.rabbitmq import RabbitMQBroker
from taskflow.brokers.redis import RedisBroker
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.results.redis import RedisResults

LEDGER_ENV = "TASKFLOW_TEST_CRON_LEDGER"
EVERY = 2  # seconds between fire times


def create_ledger(path: str) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS runs (id TEXT, enqueued REAL, pid INTEGER)")


def runs(path: str) -> list[tuple[str, float, int]]:
    """Every recorded run: (message id, enqueued at as unix time, pid)."""
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        return list(conn.execute("SELECT id, enqueued, pid FROM runs ORDER BY enqueued"))


def _build() -> Broker:
    redis_url = os.environ.get("TASKFLOW_TEST_CRON_REDIS")
    amqp_url = os.environ.get("TASKFLOW_TEST_CRON_AMQP")
    if amqp_url and redis_url:
        namespace = os.environ["TASKFLOW_TEST_CRON_NAMESPACE"]
        results = RedisResults(redis_url, namespace=namespace)
        return RabbitMQBroker(amqp_url, prefix=f"{namespace}.", results=results)
    if redis_url:
        namespace = os.environ["TASKFLOW_TEST_CRON_NAMESPACE"]
        return RedisBroker(redis_url, namespace=namespace)
    return SQLiteBroker(os.environ.get("TASKFLOW_TEST_CRON_SQLITE", "cron-test.db"))


broker = _build()


@broker.cron(f"*/{EVERY} * * * * *", name="every-2s")
@broker.actor
async def tick() -> None:
    """Record this run in the ledger."""
    message = current_message()
    assert message is not None
    with closing(sqlite3.connect(os.environ[LEDGER_ENV], timeout=30, isolation_level=None)) as c:
        c.execute("PRAGMA synchronous=OFF")
        row = (message.id, message.enqueued_at.timestamp(), os.getpid())
        c.execute("INSERT INTO runs VALUES (?, ?, ?)", row)
