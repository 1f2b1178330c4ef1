from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from typing import Any, TypedDict

import msgspec
import pytest

from taskflow import Worker
from taskflow.brokers.memory import MemoryBroker

pytestmark = pytest.mark.anyio


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    name: str
    size: float


class Options(TypedDict):
    fast: bool


def test_bare_and_configured_decorators() -> None:
    broker = MemoryBroker()

    @broker.actor
    async def plain() -> None: ...

    @broker.actor(name="custom", queue="emails", priority=3, max_retries=1, time_limit=5)
    def configured() -> None: ...

    assert plain.name == "plain" and plain.queue == "default" and plain.is_async
    assert configured.name == "custom" and configured.queue == "emails"
    assert configured.priority == 3 and not configured.is_async
    assert configured.options == {"max_retries": 1, "time_limit": 5}
    assert broker.get_actor("custom") is configured
    assert broker.queues == ["default", "emails"]


def test_unknown_option_names_the_option() -> None:
    broker = MemoryBroker()
    with pytest.raises(TypeError, match="'max_retry'"):

        @broker.actor(max_retry=3)
        def f() -> None: ...


def test_duplicate_and_invalid_names() -> None:
    broker = MemoryBroker()

    @broker.actor
    def f() -> None: ...

    with pytest.raises(ValueError, match="already declared"):
        broker.actor(name="f")(lambda: None)
    with pytest.raises(ValueError, match="invalid actor name"):
        broker.actor(name="bad name!")(lambda: None)


async def test_plain_call_runs_in_process() -> None:
    broker = MemoryBroker()

    @broker.actor
    async def add(x: int, y: int) -> int:
        return x + y

    @broker.actor
    def mul(x: int, y: int) -> int:
        return x * y

    assert await add(2, 3) == 5
    assert await mul(2, 3) == 6
    assert await broker.stats("default") == (0, 0, 0, 0)


async def test_send_with_options() -> None:
    broker = MemoryBroker()

    @broker.actor(priority=1)
    async def f(x: int) -> None: ...

    m = await f.send_with_options(args=(1,), delay=30, priority=9, max_retries=0)
    assert m.priority == 9 and m.options == {"max_retries": 0}
    assert m.eta is not None and m.eta > m.enqueued_at + dt.timedelta(seconds=29)
    assert (await broker.stats("default")).delayed == 1
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    m2 = await f.send_with_options(args=(1,), eta=eta)
    assert m2.eta == eta and m2.priority == 1
    with pytest.raises(TypeError, match="delay or eta"):
        await f.send_with_options(args=(1,), delay=1, eta=eta)
    with pytest.raises(ValueError, match="timezone-aware"):
        await f.send_with_options(args=(1,), eta=dt.datetime(2030, 1, 1))
    with pytest.raises(TypeError, match="'bogus'"):
        await f.send_with_options(args=(1,), bogus=1)
    with pytest.raises(TypeError, match="'bogus'"):
        f.message_with_options(args=(1,), bogus=1)


async def test_message_builds_without_sending() -> None:
    broker = MemoryBroker()

    @broker.actor
    async def f(x: int, *, y: str = "") -> None: ...

    m = f.message(1, y="a")
    assert (m.actor, m.queue, m.args, m.kwargs) == ("f", "default", (1,), {"y": "a"})
    assert await broker.stats("default") == (0, 0, 0, 0)
    sent = await f.send_many([m, (2,)])
    assert sent[0] is m and sent[1].args == (2,)
    assert (await broker.stats("default")).ready == 2


async def test_arguments_are_converted_to_annotations() -> None:
    broker = MemoryBroker()
    got: dict[str, Any] = {}

    @broker.actor
    async def typed(
        when: dt.datetime,
        ident: uuid.UUID,
        amount: decimal.Decimal,
        point: Point,
        box: Box,
        opts: Options,
        *,
        tags: list[str],
        day: dt.date,
    ) -> None:
        got.update(
            when=when,
            ident=ident,
            amount=amount,
            point=point,
            box=box,
            opts=opts,
            tags=tags,
            day=day,
        )

    when = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    ident = uuid.uuid4()
    await typed.send(
        when,
        ident,
        decimal.Decimal("1.25"),
        Point(1, 2),
        Box("b", 2.5),
        {"fast": True},
        tags=["a"],
        day=dt.date(2024, 5, 1),
    )
    async with Worker(broker):
        await broker.join("default", timeout=5)
    assert got == {
        "when": when,
        "ident": ident,
        "amount": decimal.Decimal("1.25"),
        "point": Point(1, 2),
        "box": Box("b", 2.5),
        "opts": {"fast": True},
        "tags": ["a"],
        "day": dt.date(2024, 5, 1),
    }
    assert await broker.dead_letters("default") == []


async def test_arguments_that_do_not_fit_are_dead_lettered() -> None:
    broker = MemoryBroker()

    @broker.actor
    async def typed(point: Point, *, n: int = 0) -> None: ...

    bad = [
        typed.message_with_options(args=({"x": "nope", "y": 1},)),
        typed.message_with_options(args=(), kwargs={"point": {"x": 1, "y": 2}, "zzz": 1}),
        typed.message_with_options(args=({"x": 1, "y": 2}, 5)),
    ]
    await broker.enqueue(bad)
    async with Worker(broker):
        await broker.join("default", timeout=5)
    dead = {d.id: d.reason for d in await broker.dead_letters("default")}
    assert set(dead) == {m.id for m in bad}
    assert all(r.startswith("invalid_arguments") for r in dead.values())


def test_composition_option_keys_are_reserved() -> None:
    broker = MemoryBroker()
    with pytest.raises(TypeError, match="'pipe_target'.*reserves"):

        @broker.actor(pipe_target={})
        async def bad() -> None: ...

    @broker.actor
    async def step(x: int = 0) -> None: ...

    with pytest.raises(TypeError, match="'group_ref'.*reserves"):
        step.message_with_options(group_ref={})
    assert step.message_with_options(pipe_ignore=True).options == {"pipe_ignore": True}
