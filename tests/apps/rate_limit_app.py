"""Worker app for the rate-limit tests with real worker processes.

``python -m taskflow worker tests.apps.rate_limit_app:broker`` builds the
broker and its limiters from the environment:

* ``TASKFLOW_RL_BROKER``: ``redis`` (URL from ``TASKFLOW_TEST_REDIS_URL``)
  or ``sqlite`` (the file in ``TASKFLOW_RL_SQLITE``);
* ``TASKFLOW_RL_NAMESPACE``: the Redis namespace of the broker and limiters;
* ``TASKFLOW_RL_LEDGER``: a directory; each actor run appends lines
  ``<event> <n> <pid> <unix time> <retries> <delivery count>`` to
  ``<dir>/<pid>.log`` (one file per process, outside the system under test).

``python -m tests.apps.rate_limit_app party N`` is one party of the barrier
``gate`` in a process of its own.

The limiters live on the broker's own server (Redis, or the SQLite file).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import anyio

from taskflow import Broker, Message
from taskflow.middleware import current_delivery
from taskflow.rate_limits import (
    Barrier,
    BucketRateLimiter,
    ConcurrentRateLimiter,
    WindowRateLimiter,
)
from taskflow.rate_limits.backends import RateLimitBackend, RedisBackend, SQLiteBackend

BROKER_ENV = "TASKFLOW_RL_BROKER"
SQLITE_ENV = "TASKFLOW_RL_SQLITE"
NAMESPACE_ENV = "TASKFLOW_RL_NAMESPACE"
LEDGER_ENV = "TASKFLOW_RL_LEDGER"
QUEUE = "limited"

LIMIT = 3
WINDOW_LIMIT = 5
WINDOW = 1.0
FRAGILE_TTL = 2.0
BARRIER_KEY = "gate"


class Row(NamedTuple):
    event: str
    n: int
    pid: int
    at: float
    retries: int
    deliveries: int


def record(event: str, n: int) -> None:
    """Append one ledger line for the current message (nothing without a ledger)."""
    directory = os.environ.get(LEDGER_ENV)
    delivery = current_delivery()
    if not directory or delivery is None:
        return
    line = (
        f"{event} {n} {os.getpid()} {time.time():.6f} "
        f"{delivery.message.retries} {delivery.delivery_count}\n"
    )
    fd = os.open(Path(directory) / f"{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_ledger(directory: Path) -> list[Row]:
    """Every line of every process's ledger file, by time."""
    rows = []
    for path in directory.glob("*.log"):
        for line in path.read_text().splitlines():
            event, n, pid, at, retries, deliveries = line.split()
            rows.append(Row(event, int(n), int(pid), float(at), int(retries), int(deliveries)))
    return sorted(rows, key=lambda r: r.at)


def peak_overlap(rows: list[Row], start: str = "start", end: str = "end") -> int:
    """Most intervals (from ``start`` to ``end`` of one n) open at once."""
    edges = sorted(
        [(r.at, 1) for r in rows if r.event == start]
        + [(r.at, -1) for r in rows if r.event == end],
        key=lambda e: (e[0], e[1]),  # an end at the same instant closes first
    )
    inside = peak = 0
    for _, step in edges:
        inside += step
        peak = max(peak, inside)
    return peak


def make_broker() -> tuple[Broker, RateLimitBackend]:
    """The broker named by the environment, and a backend on its server."""
    if os.environ.get(BROKER_ENV, "sqlite") == "redis":
        from taskflow.brokers.redis import RedisBroker

        url = os.environ.get("TASKFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
        namespace = os.environ.get(NAMESPACE_ENV, "tf-test-rl")
        return RedisBroker(url, namespace=namespace), RedisBackend(url, namespace=namespace)
    from taskflow.brokers.sqlite import SQLiteBroker

    path = os.environ.get(SQLITE_ENV, "taskflow-rl-test.sqlite3")
    sqlite = SQLiteBroker(path)
    return sqlite, SQLiteBackend(sqlite)


def build() -> tuple[Broker, RateLimitBackend]:
    """The app: the broker with its actors declared, and the limiters' backend."""
    broker, backend = make_broker()
    shared = ConcurrentRateLimiter(backend, "shared", limit=LIMIT, ttl=30)
    window = WindowRateLimiter(backend, "window", limit=WINDOW_LIMIT, window=WINDOW)
    bucket = BucketRateLimiter(backend, "bucket", limit=WINDOW_LIMIT, bucket=WINDOW)
    fragile = ConcurrentRateLimiter(backend, "fragile", limit=1, ttl=FRAGILE_TTL)

    async def run(n: int, seconds: float) -> None:
        record("start", n)
        await anyio.sleep(seconds)
        record("end", n)

    @broker.actor(queue=QUEUE, rate_limit=shared, max_retries=0)
    async def limited(n: int, seconds: float) -> None:
        await run(n, seconds)

    @broker.actor(queue=QUEUE, max_concurrency=LIMIT, max_retries=0)
    async def capped(n: int, seconds: float) -> None:
        await run(n, seconds)

    @broker.actor(queue=QUEUE, rate_limit=window, max_retries=0)
    async def windowed(n: int) -> None:
        record("start", n)

    @broker.actor(queue=QUEUE, rate_limit=bucket, max_retries=0)
    async def bucketed(n: int) -> None:
        record("start", n)

    def per_tenant(message: Message[Any]) -> ConcurrentRateLimiter:
        return ConcurrentRateLimiter(backend, f"tenant:{message.args[0]}", limit=1, ttl=30)

    @broker.actor(queue=QUEUE, rate_limit=per_tenant, max_retries=0)
    async def tenant(name: int, seconds: float) -> None:
        await run(name, seconds)

    @broker.actor(queue=QUEUE, rate_limit=fragile, max_retries=0)
    async def hold(n: int) -> None:
        record("holding", n)
        await anyio.sleep(600)

    return broker, backend


broker, backend = build()


async def party_process(n: int) -> None:
    """A party of the barrier in a process of its own: arrive, wait, record both."""
    _, own = make_broker()
    directory = Path(os.environ[LEDGER_ENV])

    def note(event: str) -> None:
        with (directory / f"party-{n}.log").open("a") as out:
            out.write(f"{event} {n} {os.getpid()} {time.time():.6f} 0 0\n")

    note("arrive")
    released = await Barrier(own, BARRIER_KEY, ttl=60).wait(timeout=30)
    note("released" if released else "timeout")
    await own.close()


if __name__ == "__main__" and sys.argv[1:2] == ["party"]:
    anyio.run(party_process, int(sys.argv[2]))
