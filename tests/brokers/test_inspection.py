"""The inspection contract (DESIGN.md §10.6): browse, get_message and workers, on every broker."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import anyio
import pytest

from taskflow import Broker, Worker
from taskflow.brokers.memory import MemoryBroker
from taskflow.brokers.sqlite import SQLiteBroker
from tests.brokers.test_contract import declare, eventually, take

pytestmark = pytest.mark.anyio

#: RabbitMQ cannot read a queue without consuming it: there browse lists only
#: the messages in flight in this process, and its worker registry is per process.
BROWSABLE = ("memory", "sqlite", "redis")


@pytest.fixture(autouse=True)
def _browsable(request: pytest.FixtureRequest) -> None:
    name = request.node.callspec.params.get("broker", "")
    partial = ("worker", "in_flight", "unknown_state", "rabbitmq_says")
    if name not in BROWSABLE and not any(p in request.node.name for p in partial):
        pytest.skip(f"{name} does not browse ready, delayed or dead messages")


def args_of(infos: list[Any]) -> list[int]:
    return [info.message.args[0] for info in infos]


async def test_browse_ready_pages_in_delivery_order(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    for i in range(5):
        await echo.send(i)
    page = await broker.browse(queue, "ready", limit=2, offset=1)
    assert args_of(page) == [1, 2]
    assert {(i.state, i.queue) for i in page} == {("ready", queue)}
    assert args_of(await broker.browse(queue)) == [0, 1, 2, 3, 4]
    assert await broker.browse(queue, "ready", limit=10, offset=5) == []


async def test_browse_delayed_has_its_eta(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    before = dt.datetime.now(dt.UTC)
    await echo.send_with_options(args=(1,), delay=60)
    (info,) = await broker.browse(queue, "delayed")
    assert info.state == "delayed" and info.eta is not None
    assert before + dt.timedelta(seconds=50) < info.eta < before + dt.timedelta(seconds=70)
    assert await broker.browse(queue, "ready") == []


async def test_browse_in_flight_has_its_lease(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    sent = await echo.send(3)
    (delivery,) = await take(broker, queue)
    (info,) = await broker.browse(queue, "in_flight")
    assert info.id == sent.id and info.state == "in_flight"
    assert info.delivery_count == 1 and info.lease_owner
    found = await broker.get_message(sent.id)
    assert found is not None and found.state == "in_flight"
    await delivery.ack()
    assert await broker.browse(queue, "in_flight") == []


async def test_browse_dead_newest_first(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    for i in range(2):
        await echo.send(i)
        (delivery,) = await take(broker, queue)
        await delivery.nack(f"boom {i}")
    dead = await broker.browse(queue, "dead")
    assert args_of(dead) == [1, 0]
    assert [d.reason for d in dead] == ["boom 1", "boom 0"]
    assert all(d.dead_at is not None and d.state == "dead" for d in dead)


async def test_get_message_finds_it_in_any_state(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    ready = await echo.send(1)
    delayed = await echo.send_with_options(args=(2,), delay=60)
    info = await broker.get_message(ready.id)
    assert info is not None and info.state == "ready" and info.message is not None
    assert info.message.args == (1,) and info.queue == queue
    info = await broker.get_message(delayed.id)
    assert info is not None and info.state == "delayed" and info.eta is not None
    assert await broker.get_message("no-such-message") is None


async def test_browse_refuses_an_unknown_state(broker: Broker, queue: str) -> None:
    with pytest.raises(ValueError, match="unknown state"):
        await broker.browse(queue, "running")  # type: ignore[arg-type]


async def test_a_running_worker_registers_and_leaves(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    worker = Worker(broker, [queue], concurrency=3, heartbeat=0.2)
    await echo.send(1)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        await broker.join(queue, timeout=10)

        async def listed() -> bool:
            mine = [w for w in await broker.workers() if w.id == worker.worker_id]
            return bool(mine) and mine[0].processed == 1

        await eventually(listed)
        (info,) = [w for w in await broker.workers() if w.id == worker.worker_id]
        assert info.pid == os.getpid() and info.queues == [queue] and info.concurrency == 3
        assert info.last_heartbeat >= info.started_at and info.in_progress == 0
        worker.stop()
    assert worker.worker_id not in {w.id for w in await broker.workers()}


async def test_a_dead_worker_expires(broker: Broker, queue: str) -> None:
    record = b'{"id":"ghost","host":"h","pid":1,"queues":["q"],"concurrency":1,'
    record += b'"started_at":0,"last_heartbeat":0,"in_progress":0,"processed":0}'
    await broker.connect()
    await broker._register_worker("ghost", record, 0.5)
    assert "ghost" in {w.id for w in await broker.workers()}

    async def gone() -> bool:
        return "ghost" not in {w.id for w in await broker.workers()}

    await eventually(gone, timeout=5)


async def test_rabbitmq_says_what_it_cannot_browse(broker: Broker, queue: str) -> None:
    if isinstance(broker, (MemoryBroker, SQLiteBroker)) or "Redis" in type(broker).__name__:
        pytest.skip("this broker browses every state")
    echo = declare(broker, queue)
    sent = await echo.send(1)
    with pytest.raises(NotImplementedError, match="without consuming them"):
        await broker.browse(queue, "ready")
    with pytest.raises(NotImplementedError, match="without consuming them"):
        await broker.get_message(sent.id)
