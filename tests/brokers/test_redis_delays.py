"""Short delays and retries on Redis fire on time, even when the consumer sleeps.

An idle consumer blocks up to ``idle_timeout`` (2 s); a delayed message or a
retry due sooner than anything it knew of must wake it. The tests send while
the consumer is idle and blocked (proved by the server's count of blocked
clients, on a private server), then measure, on the server's clock, when
each message started.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis

from taskflow import Retry, Worker, current_message
from taskflow.brokers.redis import RedisBroker
from tests.apps.redis_app import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path)
    s.start()
    yield s
    s.stop()


def server_time(admin: redis.Redis) -> float:
    seconds, micros = admin.time()
    return seconds + micros / 1e6


def blocked_clients(admin: redis.Redis) -> int:
    return int(admin.info("clients")["blocked_clients"])


async def test_a_short_delay_wakes_an_idle_consumer(server: RedisServer) -> None:
    broker = RedisBroker(server.url, idle_timeout=2.0)
    admin = server.client()
    started: dict[str, float] = {}

    @broker.actor(queue="q", max_retries=0)
    async def work() -> None:
        message = current_message()
        assert message is not None
        started[message.id] = server_time(admin)

    late: list[float] = []
    async with broker, Worker(broker, ["q"], concurrency=2):
        for _ in range(5):
            # Given: the consumer idle, blocked on its queue for up to 2 s.
            await anyio.sleep(0.3)
            with anyio.fail_after(5):
                while blocked_clients(admin) != 1:
                    await anyio.sleep(0.01)
            # When: a message is sent with a 0.3 s delay.
            sent_at = server_time(admin)
            message = await work.send_with_options(delay=0.3)
            with anyio.fail_after(5):
                while message.id not in started:
                    await anyio.sleep(0.01)
            late.append(started[message.id] - sent_at - 0.3)
    admin.close()
    # Expect: it runs at its time, not when the consumer's wait ends.
    assert min(late) >= -0.01, late
    assert max(late) < 0.25, late


async def test_a_short_retry_backoff_is_kept(server: RedisServer) -> None:
    broker = RedisBroker(server.url, idle_timeout=2.0)

    attempts: list[float] = []

    @broker.actor(queue="q", max_retries=5)
    async def flaky() -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 5:
            raise Retry(delay=0.2)

    async with broker, Worker(broker, ["q"], concurrency=1):
        await flaky.send()
        await broker.join("q", timeout=10)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert len(gaps) == 4
    assert all(0.19 <= g < 0.45 for g in gaps), gaps
