from __future__ import annotations

import pytest

from taskflow import Broker, Reject, Retry, Worker, current_message
from taskflow.brokers.memory import MemoryBroker
from taskflow.middleware.retries import backoff

pytestmark = pytest.mark.anyio


async def run_all(broker: Broker, queue: str = "default") -> Worker:
    async with Worker(broker, [queue]) as worker:
        await broker.join(queue, timeout=10)
    return worker


async def only_dead_reason(broker: Broker, queue: str = "default") -> str:
    [dead] = await broker.dead_letters(queue)
    return dead.reason


async def test_retry_signal_and_retry_count() -> None:
    broker = MemoryBroker()
    seen: list[int] = []

    @broker.actor(max_retries=5)
    async def flaky() -> None:
        m = current_message()
        assert m is not None
        seen.append(m.retries)
        if m.retries < 2:
            raise Retry(delay=0.01)

    await flaky.send()
    await run_all(broker)
    assert seen == [0, 1, 2]
    assert await broker.dead_letters("default") == []


async def test_max_retries_per_message_override() -> None:
    broker = MemoryBroker()
    calls: list[int] = []

    @broker.actor(max_retries=5, min_backoff=0.01, max_backoff=0.01)
    async def boom() -> None:
        calls.append(1)
        raise RuntimeError("x")

    await boom.send_with_options(max_retries=1)
    await run_all(broker)
    assert len(calls) == 2
    assert (await only_dead_reason(broker)).startswith("max_retries_exceeded: RuntimeError: x")


async def test_retry_when_decides() -> None:
    broker = MemoryBroker()
    calls: list[str] = []

    def transient(retries: int, exc: Exception) -> bool:
        return isinstance(exc, ConnectionError) and retries < 3

    @broker.actor(retry_when=transient, min_backoff=0.01, max_backoff=0.01)
    async def f(kind: str) -> None:
        calls.append(kind)
        raise ConnectionError() if kind == "net" else KeyError(kind)

    await f.send("net")
    await f.send("key")
    await run_all(broker)
    assert calls.count("net") == 4 and calls.count("key") == 1


async def test_throws_never_retries() -> None:
    broker = MemoryBroker()
    calls: list[int] = []

    @broker.actor(throws=(ValueError,), min_backoff=0.01)
    async def f() -> None:
        calls.append(1)
        raise ValueError("bad input")

    await f.send()
    await run_all(broker)
    assert calls == [1]
    assert await only_dead_reason(broker) == "failed: ValueError: bad input"


async def test_reject_goes_straight_to_dead_letters() -> None:
    broker = MemoryBroker()
    calls: list[int] = []

    @broker.actor
    async def f() -> None:
        calls.append(1)
        raise Reject("not for us")

    await f.send()
    await run_all(broker)
    assert calls == [1]
    assert await only_dead_reason(broker) == "rejected: not for us"


def test_backoff_is_exponential_with_jitter_and_bounded() -> None:
    for retries in range(30):
        value = backoff(retries, 1.0, 60.0)
        assert 1.0 <= value <= min(60.0, 2.0**retries)
    assert len({backoff(5, 1.0, 60.0) for _ in range(20)}) > 1
