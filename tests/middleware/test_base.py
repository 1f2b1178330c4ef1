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


async def test_after_settle_sees_every_settlement_and_its_failures_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from taskflow.broker import Delivery
    from taskflow.middleware import Outcome

    seen: list[tuple[str, Outcome, str]] = []

    class Watch(Middleware):
        async def after_settle(
            self, worker: Worker, delivery: Delivery, outcome: Outcome, reason: str
        ) -> None:
            seen.append((delivery.message.actor, outcome, reason.split(":")[0]))

    class Broken(Middleware):
        async def after_settle(
            self, worker: Worker, delivery: Delivery, outcome: Outcome, reason: str
        ) -> None:
            raise RuntimeError("hook failed")

    broker = MemoryBroker(middleware=[Watch(), Broken(), *default_middleware()])

    @broker.actor(max_retries=1, min_backoff=0.001, max_backoff=0.002)
    async def fails() -> None:
        raise ValueError("no")

    @broker.actor
    async def works() -> None:
        pass

    await works.send()
    await fails.send()
    await broker.enqueue([Message(queue="default", actor="nobody")])
    await run_all(broker)

    assert sorted(seen) == sorted(
        [
            ("works", Outcome.ACK, ""),
            ("fails", Outcome.RETRY, ""),
            ("fails", Outcome.DEAD, "max_retries_exceeded"),
            ("nobody", Outcome.DEAD, "unknown_actor"),
        ]
    )
    failures = [r for r in caplog.records if "Broken failed after settling" in r.getMessage()]
    assert len(failures) == 4  # logged each time, and the worker went on
