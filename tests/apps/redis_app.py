"""Redis worker app for the fault tests, and the contract suite's Redis factory.

Worker processes (``python -m taskflow worker tests.apps.redis_app:broker``)
build the broker from the environment:

* ``TASKFLOW_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``),
* ``TASKFLOW_REDIS_NAMESPACE`` (default ``taskflow-test``),
* ``TASKFLOW_REDIS_OPTIONS``: JSON object of broker options
  (``visibility_timeout``, ``reaper_interval``, ``max_deliveries`` ...),
* ``TASKFLOW_LEDGER``: a directory; every actor run appends one line
  ``<message id> <delivery count> <pid> <event>`` to ``<dir>/<pid>.log``
  (a file per process, written with O_APPEND, outside the system under test).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from taskflow import Broker, current_message
from taskflow.brokers.redis import RedisBroker
from taskflow.middleware import current_delivery

URL_ENV = "TASKFLOW_REDIS_URL"
NAMESPACE_ENV = "TASKFLOW_REDIS_NAMESPACE"
OPTIONS_ENV = "TASKFLOW_REDIS_OPTIONS"
LEDGER_ENV = "TASKFLOW_LEDGER"


def ledger(event: str) -> None:
    """Append ``<id> <delivery count> <pid> <event>`` for the current message to the ledger."""
    directory = os.environ.get(LEDGER_ENV)
    message = current_message()
    delivery = current_delivery()
    if not directory or message is None:
        return
    count = delivery.delivery_count if delivery is not None else 0
    line = f"{message.id} {count} {os.getpid()} {event}\n".encode()
    fd = os.open(Path(directory) / f"{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_ledger(directory: Path) -> list[tuple[str, int, int, str]]:
    """All ledger lines of all processes: (message id, delivery count, pid, event)."""
    rows = []
    for path in directory.glob("*.log"):
        for line in path.read_text().splitlines():
            mid, count, pid, event = line.split(" ", 3)
            rows.append((mid, int(count), int(pid), event))
    return rows


def build() -> RedisBroker:
    options: dict[str, Any] = json.loads(os.environ.get(OPTIONS_ENV) or "{}")
    return RedisBroker(
        os.environ.get(URL_ENV, "redis://127.0.0.1:6379/15"),
        namespace=os.environ.get(NAMESPACE_ENV, "taskflow-test"),
        **options,
    )


broker = build()


@broker.actor(queue="work", max_retries=0, time_limit=None)
async def record(ms: int = 0) -> None:
    """Sleep ``ms`` milliseconds on the loop, with a ledger line before and after."""
    ledger("start")
    if ms:
        await anyio.sleep(ms / 1000)
    ledger("done")


@broker.actor(queue="work", max_retries=0, time_limit=None)
def record_sync(ms: int = 0) -> None:
    """Sleep ``ms`` milliseconds in a worker thread, with ledger lines."""
    ledger("start")
    time.sleep(ms / 1000)
    ledger("done")


@broker.actor(queue="work", max_retries=0, time_limit=None)
async def block_loop(ms: int) -> None:
    """An async actor that wrongly blocks the event loop for ``ms`` milliseconds."""
    ledger("start")
    time.sleep(ms / 1000)  # noqa: ASYNC251 - blocking the loop is the point
    ledger("done")


@broker.actor(queue="work", max_retries=0, time_limit=None)
async def crash() -> None:
    """Kill the worker process outright, as a segfault or the OOM killer would."""
    ledger("start")
    os._exit(137)


@broker.actor(queue="work", max_retries=0, time_limit=None)
async def noop() -> None:
    """Do nothing, leave no ledger line (for backlog tests)."""


# -- the contract suite's factory ---------------------------------------------


def contract_broker(request: pytest.FixtureRequest, options: dict[str, Any]) -> Broker:
    """A RedisBroker in a namespace of its own on the test Redis, deleted after the test."""
    url: str = request.getfixturevalue("redis_url")
    namespace = f"tf-test-{uuid.uuid4().hex[:12]}"
    request.addfinalizer(lambda: delete_namespace(url, namespace))
    return RedisBroker(url, namespace=namespace, reaper_interval=0.5, **options)


def delete_namespace(url: str, namespace: str) -> None:
    """Delete every key of ``namespace``."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match="{" + namespace + "}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
