"""Unique messages: one per key while queued, delayed or running; racing producers get one."""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from taskflow import Broker, Worker
from taskflow.brokers.memory import MemoryBroker
from taskflow.brokers.rabbitmq import RabbitMQBroker
from taskflow.brokers.redis import RedisBroker
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.results.redis import RedisResults

RACERS = 4


def _build(spec: tuple[str, str]) -> Broker:
    kind, where = spec
    if kind == "rabbitmq":
        amqp, url, namespace = where.split("#")
        results = RedisResults(url, namespace=namespace)
        broker: Broker = RabbitMQBroker(amqp, prefix=f"{namespace}.", results=results)
    elif kind == "redis":
        url, namespace = where.split("#")
        broker = RedisBroker(url, namespace=namespace)
    elif kind == "sqlite":
        broker = SQLiteBroker(where)
    else:
        broker = MemoryBroker()

    @broker.actor(unique=lambda n: f"job:{n}")
    async def job(n: int) -> None: ...

    return broker


def _race(spec: tuple[str, str], start: Any, out: Any) -> None:
    """A producer process: wait for the start, then send the same unique message."""
    broker = _build(spec)

    async def send() -> str:
        async with broker:
            await broker.connect()
            start.wait(10)
            message = await broker.actors["job"].send(7)
            return message.id

    out.put(anyio.run(send))


@pytest.fixture(params=["sqlite", "redis", "rabbitmq"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "rabbitmq":
        amqp, url = request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")
        return ("rabbitmq", f"{amqp}#{url}#unique-{uuid.uuid4().hex[:8]}")
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return ("redis", f"{url}#unique-{uuid.uuid4().hex[:8]}")
    return ("sqlite", str(tmp_path / "unique.db"))


@pytest.mark.slow
def test_racing_producers_get_one_message(spec: tuple[str, str]) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    racers = [ctx.Process(target=_race, args=(spec, start, out)) for _ in range(RACERS)]
    for p in racers:
        p.start()
    start.set()
    ids = [out.get(timeout=60) for _ in racers]
    for p in racers:
        p.join(30)
    assert len(set(ids)) == 1, ids  # every producer got the same message

    async def count() -> int:
        async with _build(spec) as broker:
            ready = (await broker.stats("default")).ready
            if isinstance(broker, RabbitMQBroker):
                await broker.delete_queue("default")
            return ready

    assert anyio.run(count) == 1  # and one was enqueued


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["memory", "sqlite", "rabbitmq"])
async def test_key_held_while_queued_and_for_unique_ttl_after(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = str(tmp_path / "u.db")
    if kind == "rabbitmq":  # keys in the result backend (RedisResults)
        amqp, url = request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")
        where = f"{amqp}#{url}#unique-{uuid.uuid4().hex[:8]}"
    broker = _build((kind, where))
    job = broker.actors["job"]
    async with broker:
        first = await job.send_with_options(args=(1,), unique_key="k", unique_ttl=0.5)
        again = await job.send_with_options(args=(2,), unique_key="k", unique_ttl=0.5)
        assert again.id == first.id
        assert (await broker.stats("default")).ready == 1
        other = await job.send(1)  # the actor's unique= key "job:1", another key
        assert other.id != first.id
        assert (await job.send(1)).id == other.id
        async with Worker(broker):
            await broker.join("default", timeout=10)
        held = await job.send_with_options(args=(3,), unique_key="k")
        assert held.id == first.id  # within unique_ttl after it finished
        await anyio.sleep(0.6)
        fresh = await job.send_with_options(args=(3,), unique_key="k")
        assert fresh.id != first.id
        assert (await broker.stats("default")).ready == 1
        if isinstance(broker, RabbitMQBroker):
            await broker.delete_queue("default")
