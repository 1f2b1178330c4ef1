"""Worker app for the cancel tests: long-running async and sync actors that leave markers.

``TASKFLOW_TEST_CANCEL_AMQP`` chooses a RabbitMQ broker with its results in
Redis (``TASKFLOW_TEST_CANCEL_REDIS``), else ``TASKFLOW_TEST_CANCEL_REDIS`` /
``TASKFLOW_TEST_CANCEL_NAMESPACE`` choose a Redis broker, else ``TASKFLOW_TEST_CANCEL_SQLITE`` a SQLite one; results are
on. ``TASKFLOW_TEST_CANCEL_MARKERS`` is a directory where each actor writes
``<event>-<message id>`` files: ``started``, ``finished``, ``ran``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio

from taskflow import Broker, current_message
from taskflow.brokers.rabbitmq import RabbitMQBroker
from taskflow.brokers.redis import RedisBroker
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.results.redis import RedisResults

MARKERS_ENV = "TASKFLOW_TEST_CANCEL_MARKERS"
RUN_FOR = 30.0  # seconds the long actors run unless cancelled


def _build() -> Broker:
    amqp_url = os.environ.get("TASKFLOW_TEST_CANCEL_AMQP")
    if amqp_url:
        namespace = os.environ["TASKFLOW_TEST_CANCEL_NAMESPACE"]
        results = RedisResults(os.environ["TASKFLOW_TEST_CANCEL_REDIS"], namespace=namespace)
        return RabbitMQBroker(amqp_url, prefix=f"{namespace}.", results=results)
    redis_url = os.environ.get("TASKFLOW_TEST_CANCEL_REDIS")
    if redis_url:
        namespace = os.environ["TASKFLOW_TEST_CANCEL_NAMESPACE"]
        return RedisBroker(redis_url, namespace=namespace, results=True)
    return SQLiteBroker(os.environ.get("TASKFLOW_TEST_CANCEL_SQLITE", "cancel.db"), results=True)


def mark(event: str) -> None:
    message = current_message()
    assert message is not None
    (Path(os.environ[MARKERS_ENV]) / f"{event}-{message.id}").touch()


broker = _build()


@broker.actor(max_retries=3, min_backoff=0.1, store_results=True)
async def long_async() -> None:
    """Runs RUN_FOR seconds on the loop."""
    mark("started")
    await anyio.sleep(RUN_FOR)
    mark("finished")


@broker.actor(max_retries=3, min_backoff=0.1, store_results=True)
def long_sync() -> None:
    """Runs RUN_FOR seconds in a thread, in small steps."""
    mark("started")
    deadline = time.monotonic() + RUN_FOR
    while time.monotonic() < deadline:
        time.sleep(0.02)
    mark("finished")


@broker.actor(store_results=True)
async def quick() -> None:
    """Leaves a ``ran`` marker."""
    mark("ran")
