from __future__ import annotations

import time

import anyio
import pytest

from taskflow import Broker, Worker
from taskflow.brokers.memory import MemoryBroker

pytestmark = pytest.mark.anyio


async def run_all(broker: Broker, queue: str = "default") -> Worker:
    async with Worker(broker, [queue]) as worker:
        await broker.join(queue, timeout=10)
    return worker


async def only_dead_reason(broker: Broker, queue: str = "default") -> str:
    [dead] = await broker.dead_letters(queue)
    return dead.reason


async def test_async_time_limit_cancels_and_fails() -> None:
    broker = MemoryBroker()
    cancelled = anyio.Event()

    @broker.actor(time_limit=0.2, max_retries=0)
    async def slow() -> None:
        try:
            await anyio.sleep(30)
        finally:
            cancelled.set()

    await slow.send()
    with anyio.fail_after(10):
        await run_all(broker)
    assert cancelled.is_set()
    assert "TimeLimitExceeded" in await only_dead_reason(broker)


async def test_sync_time_limit_raises_in_thread() -> None:
    broker = MemoryBroker()
    raised: list[str] = []

    @broker.actor(time_limit=0.2, max_retries=0)
    def spin() -> None:
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                time.sleep(0.005)
        except BaseException as exc:
            raised.append(type(exc).__name__)
            raise

    await spin.send()
    with anyio.fail_after(10):
        await run_all(broker)
    assert raised == ["TimeLimitExceeded"]
    assert "TimeLimitExceeded" in await only_dead_reason(broker)


async def test_time_limits_of_concurrent_actors_each_hold() -> None:
    # One timer serves every running actor: a later message with an earlier
    # deadline must still be stopped on time, and the others must not be.
    broker = MemoryBroker()
    finished: list[int] = []
    cancelled = anyio.Event()

    @broker.actor(time_limit=5, max_retries=0)
    async def quick(i: int) -> None:
        await anyio.sleep(0.05)
        finished.append(i)

    @broker.actor(time_limit=0.3, max_retries=0)
    async def stuck() -> None:
        try:
            await anyio.sleep(30)
        finally:
            cancelled.set()

    await quick.send_many([(i,) for i in range(20)])
    await stuck.send()
    began = time.monotonic()
    with anyio.fail_after(10):
        await run_all(broker)
    assert cancelled.is_set()
    assert time.monotonic() - began < 4
    assert sorted(finished) == list(range(20))
    assert "TimeLimitExceeded" in await only_dead_reason(broker)


async def test_cancellation_from_outside_is_not_a_time_limit() -> None:
    broker = MemoryBroker()
    started = anyio.Event()

    @broker.actor(time_limit=30, max_retries=0)
    async def long() -> None:
        started.set()
        await anyio.sleep(30)

    await long.send()
    with anyio.fail_after(10):
        async with Worker(broker, ["default"], shutdown_timeout=0.1):
            await started.wait()
    stats = await broker.stats("default")
    assert (stats.ready, stats.dead) == (1, 0)  # requeued by the shutdown, not failed


async def test_time_limit_failures_are_retried() -> None:
    broker = MemoryBroker()
    attempts: list[int] = []

    @broker.actor(time_limit=0.1, max_retries=2, min_backoff=0.01, max_backoff=0.02)
    async def slow_once() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            await anyio.sleep(10)
        return "ok"

    await slow_once.send()
    worker = await run_all(broker)
    assert len(attempts) == 2 and worker.processed == 1
    assert await broker.dead_letters("default") == []
