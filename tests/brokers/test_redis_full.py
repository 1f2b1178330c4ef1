"""A full Redis (``maxmemory`` with ``noeviction``) slows taskflow down; it never wedges it.

Each test runs a private ``redis-server`` with a small ``maxmemory``, fills it
with filler keys until Redis refuses a write (the proof that it is full), and
counts every message: fetched, acked, retried, dead-lettered and reaped while
full, each run once, and only new sends refused, with one log line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from taskflow import BrokerUnavailable, Reject, Retry, Worker, current_message
from taskflow.brokers.redis import RedisBroker
from tests.apps.redis_app import RedisServer

pytestmark = pytest.mark.anyio

FILLER = b"x" * 32 * 1024  # 64 of them: 2 MB


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path, "--maxmemory", "64mb", "--maxmemory-policy", "noeviction")
    s.start()
    yield s
    s.stop()


def fill(admin: redis.Redis) -> int:
    """Fill Redis: 2 MB of filler keys, then ``maxmemory`` 1 MB below what is used.

    Lowering the limit under the usage (as an operator might) leaves the
    server firmly full; writing up to the limit only would leave it on the
    edge, refusing one write and taking the next as buffers come and go.
    Return the number of filler keys (:func:`drain` deletes them).
    """
    n = 64
    for i in range(n):
        admin.set(f"filler:{i}", FILLER)
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", used - 1024 * 1024)
    assert is_full(admin)
    return n


def is_full(admin: redis.Redis) -> bool:
    """Whether Redis refuses a write of a few bytes."""
    try:
        admin.incr("filler:probe")
    except redis.exceptions.OutOfMemoryError:
        return True
    return False


def drain(admin: redis.Redis, n: int) -> None:
    admin.delete(*[f"filler:{i}" for i in range(n)], "filler:probe")


async def test_a_full_server_still_fetches_acks_retries_and_dead_letters(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "taskflow")
    broker = RedisBroker(server.url, send_timeout=0.5, reaper_interval=0.25)
    runs: Counter[str] = Counter()

    @broker.actor(queue="q", max_retries=3)
    async def work(kind: str) -> None:
        message = current_message()
        assert message is not None
        runs[message.id] += 1
        if kind == "retry" and message.retries == 0:
            raise Retry(delay=0.1)  # settled in the same batches as the acks
        if kind == "reject":
            raise Reject()

    admin = server.client()
    async with broker:
        # Given: twenty plain messages, one delayed (due by the time the worker
        # starts), five to retry once and five to dead-letter; then Redis full.
        plain = await work.send_many([("ok",)] * 20)
        delayed = await work.send_with_options(args=("ok",), delay=0.2)
        retried = await work.send_many([("retry",)] * 5)
        rejected = await work.send_many([("reject",)] * 5)
        fill(admin)
        with pytest.raises(BrokerUnavailable, match="was full"):
            await work.send("ok")  # new work is refused...
        await anyio.sleep(0.3)
        # When: a worker runs on the full server.
        async with Worker(broker, ["q"], concurrency=10):
            # Expect: ...but everything already in it runs, each once.
            await broker.join("q", timeout=15)
        assert is_full(admin)
        assert await broker.stats("q") == (0, 0, 0, 5)
        dead = {d.id for d in await broker.dead_letters("q")}
    admin.close()
    assert dead == {m.id for m in rejected}
    assert runs == Counter(
        {m.id: 1 for m in [*plain, delayed, *rejected]} | {m.id: 2 for m in retried}
    )
    log = caplog.text
    assert log.count("is full and refuses writes") == 1  # the producer's, once
    assert "Traceback" not in log and "lease_lost" not in log


async def test_a_full_server_reaps_the_dead_and_keeps_the_living(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "taskflow")
    options: dict[str, Any] = {
        "visibility_timeout": 1.0,
        "heartbeat_interval": 0.25,
        "reaper_interval": 0.25,
    }
    broker = RedisBroker(server.url, **options)
    runs: Counter[str] = Counter()
    slow_started = anyio.Event()

    @broker.actor(queue="q", max_retries=0, time_limit=None)
    async def work(ms: int) -> None:
        message = current_message()
        assert message is not None
        runs[message.id] += 1
        if ms:
            slow_started.set()
            await anyio.sleep(ms / 1000)

    admin = server.client()
    dead_worker = RedisBroker(server.url, **options)
    async with broker, dead_worker:
        # Given: three messages fetched by a consumer that then died (no
        # heartbeat renews them), and one running for four leases.
        orphans = await work.send_many([(0,)] * 3)
        q = dead_worker._queue("q")
        _, fetched = await dead_worker._fetch(q, 3)
        assert {r.message_id for r in fetched} == {m.id for m in orphans}
        async with Worker(broker, ["q"], concurrency=4):
            slow = await work.send(4000)
            with anyio.fail_after(5):
                await slow_started.wait()
            # When: Redis fills up while the slow one runs.
            filled = fill(admin)
            full_at = time.monotonic()
            # Expect: the dead consumer's messages come back and run while full...
            with anyio.fail_after(1.0 + 0.25 + 3.0):
                while sum(runs[m.id] for m in orphans) < 3:
                    await anyio.sleep(0.05)
            assert is_full(admin)
            # ... and the living one keeps its lease until it is done, after
            # memory returns.
            await anyio.sleep(max(0.0, 2.5 - (time.monotonic() - full_at)))
            assert is_full(admin)
            drain(admin, filled)
            await broker.join("q", timeout=10)
        assert await broker.stats("q") == (0, 0, 0, 0)
    admin.close()
    assert runs == Counter({m.id: 1 for m in [*orphans, slow]})
    assert "lease_lost" not in caplog.text
    assert "redelivering 3 message(s)" in caplog.text
