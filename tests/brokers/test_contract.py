"""The broker contract (DESIGN.md §4), run against every broker in ``FACTORIES``."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from taskflow import Broker, Delivery, MessageTooLarge, Worker
from taskflow.broker import Envelope

pytestmark = pytest.mark.anyio


async def take(
    broker: Broker, queue: str, n: int = 1, *, prefetch: int = 1, timeout: float = 10.0
) -> list[Delivery]:
    """Fetch ``n`` deliveries (unsettled) from ``queue``, failing after ``timeout``."""
    got: list[Delivery] = []
    with anyio.fail_after(timeout):
        consumer = broker.consume(queue, prefetch=prefetch)
        try:
            async for delivery in consumer:
                got.append(delivery)
                if len(got) == n:
                    break
        finally:
            await consumer.aclose()
    return got


async def nothing_within(broker: Broker, queue: str, seconds: float) -> bool:
    """True if no delivery arrives from ``queue`` within ``seconds``."""
    with anyio.move_on_after(seconds):
        await take(broker, queue, 1, timeout=seconds + 1)
        return False
    return True


async def eventually(predicate: Any, timeout: float = 10.0) -> None:
    """Poll an async predicate until it is true (for time-based broker behaviour)."""
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.02)


def declare(broker: Broker, queue: str) -> Any:
    @broker.actor(queue=queue, max_retries=2, min_backoff=0.01, max_backoff=0.05)
    async def echo(x: int) -> int:
        return x

    return echo


async def test_send_consume_ack(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    sent = await echo.send(7)
    assert await broker.stats(queue) == (1, 0, 0, 0)
    [delivery] = await take(broker, queue)
    assert delivery.message == sent
    assert delivery.message.args == (7,)
    assert delivery.delivery_count == 1 and not delivery.redelivered
    stats = await broker.stats(queue)
    assert (stats.ready, stats.in_flight) == (0, 1)
    await delivery.ack()
    assert await broker.stats(queue) == (0, 0, 0, 0)


async def test_send_many_keeps_order(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    sent = await echo.send_many([(i,) for i in range(50)])
    assert (await broker.stats(queue)).ready == 50
    got = await take(broker, queue, 50, prefetch=16)
    assert [d.message.id for d in got] == [m.id for m in sent]
    for d in got:
        await d.ack()
    await broker.join(queue, timeout=5)


async def test_ids_are_time_ordered(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    sent = await echo.send_many([(i,) for i in range(100)])
    ids = [m.id for m in sent]
    assert ids == sorted(ids) and len(set(ids)) == 100


async def test_higher_priority_first(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    low = await echo.send_with_options(args=(1,), priority=0)
    high = await echo.send_with_options(args=(2,), priority=5)
    mid = await echo.send_with_options(args=(3,), priority=3)
    got = await take(broker, queue, 3)
    assert [d.message.id for d in got] == [high.id, mid.id, low.id]


async def test_delay_is_honoured(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    start = time.monotonic()
    sent = await echo.send_with_options(args=(1,), delay=0.6)
    stats = await broker.stats(queue)
    assert (stats.ready, stats.delayed) == (0, 1)
    [delivery] = await take(broker, queue, timeout=10)
    assert time.monotonic() - start >= 0.55
    assert delivery.message.id == sent.id
    await delivery.ack()


async def test_nack_dead_letters_with_reason(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    sent = await echo.send(1)
    [delivery] = await take(broker, queue)
    await delivery.nack("test_reason: because")
    assert await broker.stats(queue) == (0, 0, 0, 1)
    [dead] = await broker.dead_letters(queue)
    assert dead.id == sent.id and dead.message == sent
    assert dead.reason == "test_reason: because"
    assert await broker.requeue_dead(queue) == 1
    assert await broker.stats(queue) == (1, 0, 0, 0)
    [again] = await take(broker, queue)
    assert again.message.id == sent.id
    await again.nack("second")
    assert await broker.purge_dead(queue) == 1
    assert await broker.stats(queue) == (0, 0, 0, 0)


async def test_requeue_dead_by_id(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    a, b = await echo.send(1), await echo.send(2)
    for d in await take(broker, queue, 2, prefetch=2):
        await d.nack("x")
    assert await broker.requeue_dead(queue, ids=[b.id]) == 1
    [d] = await take(broker, queue)
    assert d.message.id == b.id
    assert [x.id for x in await broker.dead_letters(queue)] == [a.id]


async def test_retry_counts_and_delays(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    sent = await echo.send(1)
    [d] = await take(broker, queue)
    await d.retry(0.3)
    stats = await broker.stats(queue)
    assert (stats.delayed, stats.in_flight) == (1, 0)
    [again] = await take(broker, queue)
    assert again.message.id == sent.id
    assert again.message.retries == 1


async def test_requeue_counts_a_delivery_not_a_retry(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    await echo.send(1)
    [d] = await take(broker, queue)
    await d.requeue()
    [again] = await take(broker, queue)
    assert again.delivery_count == 2 and again.redelivered
    assert again.message.retries == 0


async def test_defer_counts_neither_a_retry_nor_a_delivery(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    sent = await echo.send(1)
    [d] = await take(broker, queue)
    await d.requeue()
    [d] = await take(broker, queue)
    assert d.delivery_count == 2
    await d.defer(0.3)
    stats = await broker.stats(queue)
    assert (stats.delayed, stats.in_flight) == (1, 0)
    [again] = await take(broker, queue)
    assert again.message == sent
    assert again.delivery_count == 2


@pytest.mark.parametrize("broker_options", [{"max_deliveries": 2}])
async def test_deferrals_never_reach_the_delivery_limit(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    await echo.send(1)
    for _ in range(3):
        [d] = await take(broker, queue)
        assert d.delivery_count == 1
        await d.defer(0)
    [d] = await take(broker, queue)
    await d.ack()
    assert await broker.dead_letters(queue) == []


@pytest.mark.parametrize("broker_options", [{"max_deliveries": 2}])
async def test_delivery_limit_dead_letters(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    sent = await echo.send(1)
    for _ in range(2):
        [d] = await take(broker, queue)
        await d.requeue()
    assert await nothing_within(broker, queue, 0.5)
    [dead] = await broker.dead_letters(queue)
    assert dead.id == sent.id
    assert dead.reason.startswith("delivery_limit_exceeded")


async def test_closing_consumer_hands_back_prefetched(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    await echo.send_many([(i,) for i in range(5)])
    [d] = await take(broker, queue, 1, prefetch=5)
    stats = await broker.stats(queue)
    assert (stats.ready, stats.in_flight) == (4, 1)
    await d.ack()


async def test_undecodable_bytes_go_to_dead_letters(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    await broker.connect()
    bad = [b"\xff\xfe not a message", b"[1, 2, 3]", b'{"queue": 5}', b"[" * 100_000]
    await broker._enqueue(queue, [Envelope(f"bad{i}", body, 0, 0) for i, body in enumerate(bad)])
    good = await echo.send(3)
    [d] = await take(broker, queue)
    assert d.message.id == good.id
    await d.ack()
    dead = await broker.dead_letters(queue)
    assert sorted(x.body for x in dead) == sorted(bad)
    assert all(x.reason.startswith("decode_error") and x.message is None for x in dead)


async def test_oversized_send_raises_before_io(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    big = "x" * (broker.max_message_size + 1)
    with pytest.raises(MessageTooLarge):
        await echo.send_with_options(args=(big,))
    assert await broker.stats(queue) == (0, 0, 0, 0)


@pytest.mark.parametrize("broker_options", [{"max_message_size": 1000}])
async def test_oversized_raw_message_dead_lettered(broker: Broker, queue: str) -> None:
    declare(broker, queue)
    await broker.connect()
    await broker._enqueue(queue, [Envelope("huge", b"x" * 5000, 0, 0)])
    assert await nothing_within(broker, queue, 0.3)
    [dead] = await broker.dead_letters(queue)
    assert dead.reason.startswith("too_large")


async def test_purge(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    await echo.send_many([(i,) for i in range(3)])
    await echo.send_with_options(args=(9,), delay=60)
    assert await broker.purge(queue) == 4
    assert await broker.stats(queue) == (0, 0, 0, 0)


@pytest.mark.parametrize("broker_options", [{"dead_letter_ttl": 0.3}])
async def test_dead_letters_expire(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    await echo.send(1)
    [d] = await take(broker, queue)
    await d.nack("expires")
    assert (await broker.stats(queue)).dead == 1

    async def gone() -> bool:
        return (await broker.stats(queue)).dead == 0 and not await broker.dead_letters(queue)

    await eventually(gone)


async def test_join_waits_for_in_flight(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    await echo.send(1)
    [d] = await take(broker, queue)
    joined = anyio.Event()

    async def join() -> None:
        await broker.join(queue, timeout=10)
        joined.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(join)
        assert await nothing_within(broker, queue, 0.2) and not joined.is_set()
        await d.ack()
    assert joined.is_set()


async def test_join_times_out(broker: Broker, queue: str) -> None:
    echo = declare(broker, queue)
    await echo.send(1)
    with pytest.raises(TimeoutError):
        await broker.join(queue, timeout=0.2)


# -- through a worker ---------------------------------------------------------


async def test_worker_runs_async_and_sync_actors(broker: Broker, queue: str) -> None:
    seen: list[tuple[str, int]] = []

    @broker.actor(queue=queue)
    async def a(x: int) -> None:
        seen.append(("a", x))

    @broker.actor(queue=queue)
    def s(x: int) -> None:
        seen.append(("s", x))

    await a.send_many([(i,) for i in range(20)])
    await s.send_many([(i,) for i in range(20)])
    async with Worker(broker, [queue], concurrency=8):
        await broker.join(queue, timeout=20)
    assert sorted(seen) == sorted([("a", i) for i in range(20)] + [("s", i) for i in range(20)])


async def test_worker_retries_then_dead_letters(broker: Broker, queue: str) -> None:
    calls: list[int] = []

    @broker.actor(queue=queue, max_retries=2, min_backoff=0.01, max_backoff=0.02)
    async def boom() -> None:
        calls.append(1)
        raise ValueError("always")

    sent = await boom.send()
    async with Worker(broker, [queue]):
        await broker.join(queue, timeout=20)
    assert len(calls) == 3
    [dead] = await broker.dead_letters(queue)
    assert dead.id == sent.id
    assert dead.reason.startswith("max_retries_exceeded: ValueError: always")


async def test_worker_dead_letters_bad_input(broker: Broker, queue: str) -> None:
    @broker.actor(queue=queue)
    async def add(x: int, y: int) -> int:
        return x + y

    good = await add.send(1, 2)
    wrong_arity = await add.send_with_options(args=(1, 2, 3))
    wrong_type = await add.send_with_options(args=("one", 2))
    unknown = add.message(1, 2)
    unknown = type(unknown)(queue=queue, actor="nobody_declared_me", args=(1,))
    await broker.enqueue([unknown])
    async with Worker(broker, [queue]) as worker:
        await broker.join(queue, timeout=20)
    assert worker.processed == 1
    reasons = {d.id: d.reason for d in await broker.dead_letters(queue)}
    assert good.id not in reasons
    assert reasons[wrong_arity.id].startswith("invalid_arguments")
    assert reasons[wrong_type.id].startswith("invalid_arguments")
    assert reasons[unknown.id].startswith("unknown_actor")


async def test_a_message_sent_at_the_size_limit_is_delivered_after_its_retries(
    broker: Broker, queue: str
) -> None:
    @broker.actor(queue=queue)
    async def carry(payload: str) -> None:
        pass

    # Given a message that fits the size limit with a few bytes to spare
    broker.max_message_size = 4096
    probe = broker.codec.encode(carry.message("x"))
    sent = await carry.send("x" * (broker.max_message_size - len(probe) - 4))
    # When it is retried again and again (each retry adds its eta and count)
    for attempt in range(1, 13):
        [delivery] = await take(broker, queue)
        assert delivery.message.id == sent.id
        assert delivery.message.retries == attempt - 1
        await delivery.retry(0.001)
    # Expect it still delivered, never dead-lettered as too large
    [delivery] = await take(broker, queue)
    assert delivery.message.retries == 12
    await delivery.ack()
    assert (await broker.stats(queue)).dead == 0
