from __future__ import annotations

import datetime as dt
import time
from typing import Any

import anyio
import msgspec
import pytest

from taskflow import Broker, Message, Middleware, Reject, Retry, Worker, current_message
from taskflow.brokers.memory import MemoryBroker
from taskflow.middleware import Context, Results, Retries, default_middleware
from taskflow.middleware.retries import backoff
from taskflow.results import MemoryResults

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


async def test_max_age_skips_old_messages() -> None:
    broker = MemoryBroker()
    calls: list[int] = []

    @broker.actor(max_age=60)
    async def f() -> None:
        calls.append(1)

    await f.send()
    old = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=61)
    stale = msgspec.structs.replace(f.message(), enqueued_at=old)
    await broker.enqueue([stale])
    await run_all(broker)
    assert calls == [1]
    [dead] = await broker.dead_letters("default")
    assert dead.id == stale.id and dead.reason.startswith("max_age_exceeded")


def test_backoff_is_exponential_with_jitter_and_bounded() -> None:
    for retries in range(30):
        value = backoff(retries, 1.0, 60.0)
        assert 1.0 <= value <= min(60.0, 2.0**retries)
    assert len({backoff(5, 1.0, 60.0) for _ in range(20)}) > 1


async def test_custom_middleware_order_hooks_and_options() -> None:
    events: list[str] = []

    class Tag(Middleware):
        actor_options = frozenset({"tag"})

        def __init__(self, name: str) -> None:
            self.name = name

        async def before_enqueue(self, broker: Broker, message: Message[Any]) -> Message[Any]:
            events.append(f"enqueue-{self.name}")
            return message

        async def process(self, ctx: Context, call_next: Any) -> Any:
            events.append(f"in-{self.name}:{ctx.option('tag')}")
            result = await call_next(ctx)
            events.append(f"out-{self.name}")
            return result

    broker = MemoryBroker(middleware=[Tag("a"), Tag("b"), *default_middleware()])

    @broker.actor(tag="t")
    async def f() -> None:
        events.append("actor")

    await f.send()
    await run_all(broker)
    assert events == ["enqueue-a", "enqueue-b", "in-a:t", "in-b:t", "actor", "out-b", "out-a"]


async def test_exception_in_process_fails_the_delivery() -> None:
    class Broken(Middleware):
        async def process(self, ctx: Context, call_next: Any) -> Any:
            raise RuntimeError("middleware broke")

    broker = MemoryBroker(middleware=[Broken()])

    @broker.actor
    async def f() -> None: ...

    await f.send()
    await run_all(broker)
    assert await only_dead_reason(broker) == "failed: RuntimeError: middleware broke"


def test_default_middleware_is_fresh_and_places_results_outside_retries() -> None:
    first, second = default_middleware(), default_middleware()
    assert [type(m) for m in first] == [type(m) for m in second]
    assert all(a is not b for a, b in zip(first, second, strict=True))
    assert not any(isinstance(m, Results) for m in first)

    backend = MemoryResults()
    stack = default_middleware(results=backend)
    kinds = [type(m) for m in stack]
    assert kinds.index(Results) == kinds.index(Retries) - 1
    assert next(m for m in stack if isinstance(m, Results)).backend is backend


def test_broker_adds_results_to_a_given_stack_once() -> None:
    broker = MemoryBroker(middleware=default_middleware(), results=True)
    assert sum(isinstance(m, Results) for m in broker.middleware) == 1
    default = MemoryBroker(results=True)
    assert [type(m) for m in default.middleware] == [
        type(m) for m in default_middleware(results=default.results)
    ]
