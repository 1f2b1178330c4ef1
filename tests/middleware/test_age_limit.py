from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from taskflow import Broker, Worker
from taskflow.brokers.memory import MemoryBroker

pytestmark = pytest.mark.anyio


async def run_all(broker: Broker, queue: str = "default") -> Worker:
    async with Worker(broker, [queue]) as worker:
        await broker.join(queue, timeout=10)
    return worker


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
