"""RabbitMQ worker app for the fault tests, and the contract suite's RabbitMQ factories.

Worker processes (``python -m taskflow worker tests.apps.rabbitmq_app:broker``)
build the broker from the environment:

* ``TASKFLOW_AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``),
* ``TASKFLOW_AMQP_PREFIX``: prefix of every queue name (unique per test),
* ``TASKFLOW_AMQP_OPTIONS``: JSON object of broker options
  (``queue_type``, ``max_deliveries`` ...),
* ``TASKFLOW_LEDGER``: a directory; every actor run appends lines
  ``<message id> <delivery count> <pid> <event> <unix time>`` to
  ``<dir>/<pid>.log`` (a file per process, written with O_APPEND, outside the
  system under test).
* ``TASKFLOW_REDIS_LEDGER``: ``<redis url> <hash key>``, for :func:`tally`,
  which counts runs per message id in a Redis hash (one awaited Redis call
  per job, as real jobs make).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pytest

from taskflow import Broker, current_message
from taskflow.brokers.rabbitmq import RabbitMQBroker
from taskflow.middleware import current_delivery

URL_ENV = "TASKFLOW_AMQP_URL"
PREFIX_ENV = "TASKFLOW_AMQP_PREFIX"
OPTIONS_ENV = "TASKFLOW_AMQP_OPTIONS"
LEDGER_ENV = "TASKFLOW_LEDGER"
REDIS_LEDGER_ENV = "TASKFLOW_REDIS_LEDGER"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


class Row(NamedTuple):
    """One ledger line."""

    id: str
    deliveries: int
    pid: int
    event: str
    at: float


def ledger(event: str) -> None:
    """Append ``<id> <delivery count> <pid> <event> <time>`` for the current message."""
    directory = os.environ.get(LEDGER_ENV)
    message = current_message()
    delivery = current_delivery()
    if not directory or message is None:
        return
    count = delivery.delivery_count if delivery is not None else 0
    line = f"{message.id} {count} {os.getpid()} {event} {time.time():.6f}\n".encode()
    fd = os.open(Path(directory) / f"{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_ledger(directory: Path) -> list[Row]:
    """All ledger lines of all processes, oldest first."""
    rows = []
    for path in directory.glob("*.log"):
        for line in path.read_text().splitlines():
            mid, count, pid, event, at = line.split(" ")
            rows.append(Row(mid, int(count), int(pid), event, float(at)))
    return sorted(rows, key=lambda r: r.at)


def build() -> RabbitMQBroker:
    options: dict[str, Any] = json.loads(os.environ.get(OPTIONS_ENV) or "{}")
    prefix = os.environ.get(PREFIX_ENV, "tf-test.")
    return RabbitMQBroker(
        os.environ.get(URL_ENV, DEFAULT_URL),
        prefix=prefix,
        connection_name=f"taskflow-test {prefix} worker pid {os.getpid()}",
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


_redis: Any = None


def _redis_ledger() -> tuple[Any, str]:
    global _redis
    url, key = os.environ[REDIS_LEDGER_ENV].split(" ")
    if _redis is None:
        import redis.asyncio as aioredis

        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=30)
        _redis = aioredis.Redis(connection_pool=pool)
    return _redis, key


@broker.actor(queue="work", max_retries=0, time_limit=None)
async def tally(ms: int = 0) -> None:
    """Sleep ``ms`` milliseconds, then count this run in the Redis ledger."""
    message = current_message()
    assert message is not None
    if ms:
        await anyio.sleep(ms / 1000)
    client, key = _redis_ledger()
    await client.hincrby(key, message.id, 1)


@broker.actor(queue="work", max_retries=0, time_limit=None)
def record_sync(ms: int = 0) -> None:
    """Sleep ``ms`` milliseconds in a worker thread, with ledger lines."""
    ledger("start")
    time.sleep(ms / 1000)
    ledger("done")


@broker.actor(queue="work", max_retries=0, time_limit=None)
async def crash() -> None:
    """Kill the worker process outright, as a segfault or the OOM killer would."""
    ledger("start")
    os._exit(137)


@broker.actor(queue="work", max_retries=0, time_limit=None)
async def add(x: int, y: int) -> int:
    """Add two numbers, with a ledger line."""
    ledger("done")
    return x + y


@broker.actor(queue="work", max_retries=0, time_limit=None)
async def slow_first(ms: int) -> None:
    """Sleep ``ms`` milliseconds on the first delivery only (later ones finish at once)."""
    ledger("start")
    delivery = current_delivery()
    if delivery is not None and delivery.delivery_count == 1:
        await anyio.sleep(ms / 1000)
    ledger("done")


@broker.actor(queue="work", max_retries=0, time_limit=None)
def slow_first_sync(ms: int) -> None:
    """Like :func:`slow_first`, in a worker thread."""
    ledger("start")
    delivery = current_delivery()
    if delivery is not None and delivery.delivery_count == 1:
        time.sleep(ms / 1000)
    ledger("done")


@broker.actor(queue="work", max_retries=3, min_backoff=0.05, max_backoff=0.2, time_limit=None)
async def chaos(n: int, retry: bool = False, ms: int = 0) -> None:
    """Sleep ``ms`` ms with ledger lines; with ``retry``, fail the first attempt (retried)."""
    ledger("start")
    if ms:
        await anyio.sleep(ms / 1000)
    message = current_message()
    if retry and message is not None and message.retries == 0:
        raise RuntimeError("failing the first attempt, as asked")
    ledger("done")


@broker.actor(queue="work", max_retries=0, time_limit=None)
async def crash_before_ack() -> None:
    """Finish the work, then die before the ack, on the first delivery only."""
    ledger("done")
    delivery = current_delivery()
    if delivery is not None and delivery.delivery_count == 1:
        os._exit(137)


# -- fault injection on the test RabbitMQ -------------------------------------

LOCK_PATH = Path(tempfile.gettempdir()) / "taskflow-rabbitmq-tests.lock"


@contextmanager
def server_lock(*, exclusive: bool) -> Iterator[None]:
    """Hold the test RabbitMQ: shared by ordinary tests, exclusive for server-wide faults.

    ``stop_app`` and memory alarms hit every connection on the node, so a
    test run that injects them waits until no other run (another checkout,
    another session) is in the middle of a RabbitMQ test, and the others
    wait for it. A file lock on the host does that across processes.
    """
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


_CLOSE_CONNECTIONS = """Ps = [P || I <- rabbit_networking:connection_info_all([pid, client_properties]),
  {pid, P} <- [lists:keyfind(pid, 1, I)],
  {client_properties, CP} <- [lists:keyfind(client_properties, 1, I)],
  {_, _, N} <- [lists:keyfind(<<"connection_name">>, 1, CP)],
  binary:match(N, <<"MARKER">>) =/= nomatch],
[rabbit_networking:close_connection(P, "taskflow fault test") || P <- Ps],
length(Ps)."""


_UNACKED_BY = """Cs = [P || I <- rabbit_networking:connection_info_all([pid, client_properties]),
  {pid, P} <- [lists:keyfind(pid, 1, I)],
  {client_properties, CP} <- [lists:keyfind(client_properties, 1, I)],
  {_, _, N} <- [lists:keyfind(<<"connection_name">>, 1, CP)],
  binary:match(N, <<"MARKER">>) =/= nomatch],
lists:sum([U || Ch <- rabbit_channel:list(),
  [{connection, C}, {messages_unacknowledged, U}] <-
    [rabbit_channel:info(Ch, [connection, messages_unacknowledged])],
  lists:member(C, Cs)])."""


def unacked_by(marker: str) -> int:
    """Deliveries unacked on the connections whose name contains ``marker``."""
    if '"' in marker or "\\" in marker:
        raise ValueError("marker must not contain quotes or backslashes")
    return int(rabbitmqctl("eval", _UNACKED_BY.replace("MARKER", marker)).strip())


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    """Run ``rabbitmqctl`` on the local node; return its output (raise on failure)."""
    result = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def close_connections(marker: str) -> int:
    """Force-close every connection whose name contains ``marker``; return how many.

    The same fault as ``rabbitmqctl close_all_connections``, limited to the
    test's own connections so that nothing else on the shared server is hit.
    """
    if '"' in marker or "\\" in marker:
        raise ValueError("marker must not contain quotes or backslashes")
    return int(rabbitmqctl("eval", _CLOSE_CONNECTIONS.replace("MARKER", marker)).strip())


# -- the contract suite's factories -------------------------------------------


CONTRACT_PREFIX = "tf-test."


def contract_broker(
    request: pytest.FixtureRequest, options: dict[str, Any], *, queue_type: str = "classic"
) -> Broker:
    """A RabbitMQBroker for one contract test; the queues it declared are deleted afterwards.

    Queue names are unique per test (the ``queue`` fixture), so a shared
    prefix keeps runs apart while the delay exchanges are reused.
    """
    url: str = request.getfixturevalue("amqp_url")
    if queue_type == "quorum" and request.node.originalname == "test_higher_priority_first":
        pytest.skip("quorum queues have no message priorities before RabbitMQ 4.0")
    lock = server_lock(exclusive=False)
    lock.__enter__()
    request.addfinalizer(lambda: lock.__exit__(None, None, None))
    broker = RabbitMQBroker(
        url,
        prefix=CONTRACT_PREFIX,
        queue_type="quorum" if queue_type == "quorum" else "classic",
        **options,
    )
    request.addfinalizer(lambda: delete_queues(url, CONTRACT_PREFIX, broker._declarer.declared))
    return broker


def delete_queues(
    url: str, prefix: str, queues: set[str] | frozenset[str], *, exchanges: bool = False
) -> None:
    """Delete ``queues`` (with their delay and dead-letter queues) under ``prefix``."""
    if queues or exchanges:
        asyncio.run(_delete(url, prefix, set(queues), exchanges))


async def _delete(url: str, prefix: str, queues: set[str], exchanges: bool) -> None:
    async with RabbitMQBroker(url, prefix=prefix) as cleaner:
        for queue in queues:
            await cleaner.delete_queue(queue)
        if exchanges:
            await cleaner.delete_exchanges()


# -- the server's own log -------------------------------------------------------


def server_log_path() -> Path:
    """The log file of the local RabbitMQ node (``rabbitmq-diagnostics log_location``)."""
    out = subprocess.run(
        ["rabbitmq-diagnostics", "-q", "log_location"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    for line in out.splitlines():
        if line.strip().endswith(".log") and Path(line.strip()).exists():
            return Path(line.strip())
    found = sorted(Path("/var/log/rabbitmq").glob("rabbit@*.log"))
    found = [p for p in found if not p.name.endswith("_upgrade.log")]
    if not found:
        raise RuntimeError("cannot find the RabbitMQ node's log file")
    return found[0]


class ServerLog:
    """What the RabbitMQ node logs from now on, read back per connection name.

    RabbitMQ logs a channel exception as ``Channel error on connection <pid>
    ...`` followed by the operation and the error; the connection's
    client-provided name, logged when it opened, says whose it was, so
    other test runs on the shared node are told apart.
    """

    def __init__(self) -> None:
        self.path = server_log_path()
        self.offset = self.path.stat().st_size

    def text(self) -> str:
        """Everything logged since this object was made."""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def channel_errors(self, marker: str) -> list[str]:
        """Channel exceptions on connections whose name contains ``marker``."""
        names: dict[str, str] = {}
        errors: list[str] = []
        lines = self.text().splitlines()
        for i, line in enumerate(lines):
            if "has a client-provided name:" in line:
                pid = line.split("connection ", 1)[1].split(" ", 1)[0]
                names[pid] = line.rsplit("has a client-provided name: ", 1)[1]
            elif "Channel error on connection" in line:
                pid = line.split("Channel error on connection ", 1)[1].split(" ", 1)[0]
                detail = lines[i + 1] if i + 1 < len(lines) else ""
                if marker in names.get(pid, ""):
                    errors.append(detail.split("] ", 1)[-1])
        return errors
