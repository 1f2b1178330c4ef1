"""The ``rate_limit`` and ``max_concurrency`` options: deferral, not failure, on every broker."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import taskflow
from taskflow import Broker, Message, Worker
from taskflow.brokers.memory import MemoryBroker
from taskflow.middleware import current_delivery, default_middleware
from taskflow.middleware.rate_limits import _Pacer
from taskflow.rate_limits import ConcurrentRateLimiter, WindowRateLimiter
from taskflow.rate_limits.backends import MemoryBackend, RateLimitBackend, RedisBackend, for_broker
from tests.brokers.conftest import FACTORIES
from tests.conftest import REDIS_URL, require_service

pytestmark = pytest.mark.anyio

BROKERS = ["memory", "sqlite", "redis", "rabbitmq"]


@pytest.fixture(params=BROKERS)
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    options: dict[str, Any] = {"max_deliveries": 2}
    if request.param == "rabbitmq":
        # RabbitMQ has no store of its own: the limits live in Redis.
        options["middleware"] = default_middleware(rate_limits=await _redis_backend())
    b = FACTORIES[request.param](request, tmp_path, options)
    async with b:
        yield b


async def _redis_backend() -> RedisBackend:
    url = require_service("Redis", REDIS_URL, 6379)
    return RedisBackend(url, namespace=f"tf-test-rl-{secrets.token_hex(4)}")


@pytest.fixture
async def backend(broker: Broker) -> AsyncIterator[RateLimitBackend]:
    made = for_broker(broker) or await _redis_backend()
    yield made
    await made.close()


@pytest.fixture
def queue() -> str:
    return f"q-{secrets.token_hex(6)}"


class Peak:
    """Counts how many runs are inside at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.peak = 0
        self.runs: list[tuple[int, int]] = []  # (retries, delivery count) of each completed run

    async def run(self, message: Message[Any] | None, seconds: float) -> None:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            await anyio.sleep(seconds)
        finally:
            self.inside -= 1
        delivery = current_delivery()
        assert delivery is not None
        self.runs.append((delivery.message.retries, delivery.delivery_count))


async def drain(broker: Broker, queue: str, *, concurrency: int = 20, timeout: float = 30) -> None:
    async with Worker(broker, [queue], concurrency=concurrency):
        await broker.join(queue, timeout=timeout)


async def test_full_limiter_defers_and_every_message_completes_with_retries_0(
    broker: Broker, backend: RateLimitBackend, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given: a limit of 2 and 12 messages, 20 worker slots, max_deliveries 2
    limiter = ConcurrentRateLimiter(backend, f"api-{queue}", limit=2, ttl=30)
    peak = Peak()

    @broker.actor(queue=queue, rate_limit=limiter, max_retries=0)
    async def call_partner(n: int) -> None:
        await peak.run(None, 0.05)

    caplog.set_level(logging.DEBUG, "taskflow.middleware.rate_limits")
    await call_partner.send_many([(n,) for n in range(12)])
    # When
    await drain(broker, queue)
    # Expect: all ran, never more than 2 at once, none used a retry or counted a delivery
    deferrals = [r for r in caplog.records if "deferred" in r.getMessage()]
    assert len(peak.runs) == 12
    assert peak.peak == 2
    assert len(deferrals) >= 10
    assert all(r.levelno == logging.DEBUG for r in deferrals)
    assert {retries for retries, _ in peak.runs} == {0}
    assert {count for _, count in peak.runs} == {1}
    assert await broker.dead_letters(queue) == []


async def test_rate_limit_exceeded_raised_inside_the_actor_defers(
    broker: Broker, backend: RateLimitBackend, queue: str
) -> None:
    # Given: an actor that meets a full window three times, with no retries allowed
    window = WindowRateLimiter(backend, f"smtp-{queue}", limit=1, window=0.3)
    attempts: list[int] = []

    @broker.actor(queue=queue, max_retries=0)
    async def send_mail(n: int) -> int:
        attempts.append(n)
        async with window.acquire():
            delivery = current_delivery()
            assert delivery is not None
            return delivery.message.retries * 100 + delivery.delivery_count

    await send_mail.send_many([(n,) for n in range(3)])
    # When
    await drain(broker, queue)
    # Expect: deferred (more attempts than messages), none dead, all at retries 0
    assert len(attempts) > 3
    assert sorted(set(attempts)) == [0, 1, 2]
    assert await broker.dead_letters(queue) == []
    stats = await broker.stats(queue)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


async def test_sync_actor_raising_from_acquire_sync_is_deferred(
    broker: Broker, backend: RateLimitBackend, queue: str
) -> None:
    limiter = ConcurrentRateLimiter(backend, f"sync-{queue}", limit=1, ttl=30)
    held = await limiter.try_acquire()
    assert held is not None
    done: list[int] = []

    @broker.actor(queue=queue, max_retries=0)
    def report(n: int) -> None:
        with limiter.acquire_sync():
            done.append(n)

    await report.send(1)
    async with Worker(broker, [queue]):
        await anyio.sleep(0.5)
        assert done == []  # deferred while the slot is held
        await limiter.release(held)
        await broker.join(queue, timeout=20)
    assert done == [1]
    assert await broker.dead_letters(queue) == []


async def test_limiter_released_after_failure_and_time_limit(
    broker: Broker, backend: RateLimitBackend, queue: str
) -> None:
    limiter = ConcurrentRateLimiter(backend, f"one-{queue}", limit=1, ttl=300)

    @broker.actor(queue=queue, rate_limit=limiter, max_retries=0)
    async def fails() -> None:
        raise ValueError("boom")

    @broker.actor(queue=queue, rate_limit=limiter, max_retries=0, time_limit=0.2)
    async def too_slow() -> None:
        await anyio.sleep(30)

    await fails.send()
    await too_slow.send()
    await drain(broker, queue)
    reasons = sorted(d.reason.split(":")[1].strip() for d in await broker.dead_letters(queue))
    assert reasons == ["TimeLimitExceeded", "ValueError"]
    # Both gave the slot back (a ttl of 300 s would hold it otherwise).
    assert await limiter.try_acquire() is not None


async def test_limiter_released_when_the_worker_cancels(
    broker: Broker, backend: RateLimitBackend, queue: str
) -> None:
    limiter = ConcurrentRateLimiter(backend, f"cancel-{queue}", limit=1, ttl=300)
    started = anyio.Event()

    @broker.actor(queue=queue, rate_limit=limiter)
    async def forever() -> None:
        started.set()
        await anyio.sleep(60)

    await forever.send()
    worker = Worker(broker, [queue], shutdown_timeout=0.2)
    async with worker:
        with anyio.fail_after(10):
            await started.wait()
        assert await limiter.try_acquire() is None
    assert await limiter.try_acquire() is not None


async def test_per_tenant_keys_are_independent(
    broker: Broker, backend: RateLimitBackend, queue: str
) -> None:
    peaks: dict[str, Peak] = {"a": Peak(), "b": Peak()}
    both = Peak()

    def per_tenant(message: Message[Any]) -> ConcurrentRateLimiter:
        return ConcurrentRateLimiter(backend, f"{queue}:tenant:{message.kwargs['tenant']}", limit=1)

    @broker.actor(queue=queue, rate_limit=per_tenant)
    async def work(tenant: str) -> None:
        both.inside += 1
        both.peak = max(both.peak, both.inside)
        try:
            await peaks[tenant].run(None, 0.1)
        finally:
            both.inside -= 1

    for tenant in "abab":
        await work.send(tenant=tenant)
    await drain(broker, queue)
    assert [peaks[t].peak for t in "ab"] == [1, 1]
    assert both.peak == 2  # a's limit did not hold b back
    assert len(peaks["a"].runs) == len(peaks["b"].runs) == 2


async def test_max_concurrency_is_a_cap_on_the_brokers_server(broker: Broker, queue: str) -> None:
    peak = Peak()

    @broker.actor(queue=queue, max_concurrency=3)
    async def heavy(n: int) -> None:
        await peak.run(None, 0.05)

    await heavy.send_many([(n,) for n in range(12)])
    await drain(broker, queue)
    assert len(peak.runs) == 12
    assert peak.peak == 3
    assert {retries for retries, _ in peak.runs} == {0}


def test_max_concurrency_on_rabbitmq_needs_a_backend_at_decoration() -> None:
    from taskflow.brokers.rabbitmq import RabbitMQBroker

    broker = RabbitMQBroker("amqp://guest:guest@127.0.0.1:5672/")
    with pytest.raises(TypeError, match="max_concurrency needs a rate-limit backend"):

        @broker.actor(max_concurrency=2)
        async def heavy() -> None: ...

    with_backend = RabbitMQBroker(
        "amqp://guest:guest@127.0.0.1:5672/",
        middleware=default_middleware(rate_limits=RedisBackend(REDIS_URL)),
    )

    @with_backend.actor(max_concurrency=2)
    async def fine() -> None: ...


def test_option_values_are_checked_at_decoration() -> None:
    broker = MemoryBroker()
    with pytest.raises(TypeError, match="rate_limit must be a limiter"):
        broker.actor(name="a", rate_limit="partner-api")(lambda: None)
    with pytest.raises(ValueError, match="at least 1"):
        broker.actor(name="b", max_concurrency=0)(lambda: None)
    with pytest.raises(TypeError, match="must be an int"):
        broker.actor(name="c", max_concurrency=2.5)(lambda: None)


def test_deferral_delays_follow_the_line_grow_while_full_and_are_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    pacer = _Pacer(0.1, 5.0)
    limiter = ConcurrentRateLimiter(MemoryBackend(), "k", limit=2)

    def full(ahead: int = 0, retry_after: float | None = None) -> float:
        exc = taskflow.RateLimitExceeded("k", retry_after)
        exc.limiter = limiter
        exc.ahead = ahead
        return pacer.full(exc)

    # The first deferral is short, about 0.1 s.
    assert 0.08 <= full() <= 0.12
    # Later places in the line come back later: holds of 1 s and a limit of 2
    # free a slot every 0.5 s (taken as every 1/3 s, so that room never waits).
    pacer.held("k", 1.0)
    assert 0.08 <= full(ahead=0) <= 0.12
    assert 1.0 <= full(ahead=4) <= 1.7
    # While the key stays full the delay grows, and never passes 5 s.
    clock[0] += 60
    assert full() >= 4.0
    assert max(full(ahead=n) for n in range(100)) <= 5.0
    # Room again: short delays again.
    pacer.room("k")
    assert full() <= 0.12
    # A window's hint of when it has room is used, within the cap.
    assert 0.8 <= full(retry_after=1.0) <= 1.2
    assert full(retry_after=60.0) <= 5.0


async def test_memory_backend_default_for_memory_broker() -> None:
    assert isinstance(for_broker(MemoryBroker()), MemoryBackend)
    with pytest.raises(taskflow.RateLimitExceeded):
        limiter = ConcurrentRateLimiter(MemoryBackend(), "x", limit=1)
        async with limiter.acquire(), limiter.acquire():
            pass


async def test_a_deferred_message_holds_no_worker_slot(
    broker: Broker, backend: RateLimitBackend, queue: str
) -> None:
    # Given: a worker with ONE slot, and a limiter held elsewhere the whole time
    limiter = ConcurrentRateLimiter(backend, f"busy-{queue}", limit=1, ttl=60)
    held = await limiter.try_acquire()
    assert held is not None
    done = anyio.Event()

    @broker.actor(queue=queue, rate_limit=limiter)
    async def limited() -> None:
        pytest.fail("ran while its limiter was full")

    @broker.actor(queue=queue)
    async def free() -> None:
        done.set()

    await limited.send()
    await free.send()
    # When / Expect: the free message runs although the limited one waits for room
    async with Worker(broker, [queue], concurrency=1):
        with anyio.fail_after(10):
            await done.wait()
            # The free one is acked; only the limited one is left, waiting for room.
            while sum((await broker.stats(queue))[:3]) != 1:
                await anyio.sleep(0.02)
    await limiter.release(held)
