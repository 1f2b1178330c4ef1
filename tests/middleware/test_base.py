from __future__ import annotations

from typing import Any

import pytest

from taskflow import Broker, Message, Middleware, Worker
from taskflow.brokers.memory import MemoryBroker
from taskflow.middleware import Context, default_middleware

pytestmark = pytest.mark.anyio


async def run_all(broker: Broker, queue: str = "default") -> Worker:
    async with Worker(broker, [queue]) as worker:
        await broker.join(queue, timeout=10)
    return worker


async def only_dead_reason(broker: Broker, queue: str = "default") -> str:
    [dead] = await broker.dead_letters(queue)
    return dead.reason


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
