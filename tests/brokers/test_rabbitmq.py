"""RabbitMQBroker beyond the shared contract: routing failures, TLS, delays, counts, timeouts."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from taskflow import BrokerUnavailable, LeaseLost, Worker, broker_from_url
from taskflow.brokers.rabbitmq import MAX_DELAY, PublishRejected, RabbitMQBroker, Unroutable
from taskflow.brokers.rabbitmq._headers import H_DEAD_AT, H_DELAY_LEFT, H_REASON, dead_record
from taskflow.brokers.rabbitmq._topology import UNIT_MS, delay_units, routing_key
from tests.apps.rabbitmq_app import (
    CONTRACT_PREFIX,
    close_connections,
    delete_queues,
    rabbitmqctl,
    server_lock,
)
from tests.brokers.test_contract import nothing_within, take

pytestmark = pytest.mark.anyio

Make = Callable[..., RabbitMQBroker]

# One call: remember the watermark, set it below what the node uses, report alarms.
RAISE_ALARM = (
    "W = vm_memory_monitor:get_vm_memory_high_watermark(), "
    "vm_memory_monitor:set_vm_memory_high_watermark(0.000001), timer:sleep(300), "
    'io:format("~p~n", [W]), rabbit_alarm:get_alarms().'
)


@pytest.fixture
def exclusive_rabbitmq() -> Iterator[None]:
    """For tests that disturb the whole node (memory alarm): no other RabbitMQ test meanwhile."""
    with server_lock(exclusive=True):
        yield


@pytest.fixture
async def make(amqp_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """Build connected-on-use brokers under the test prefix; delete their queues afterwards."""
    with ExitStack() as stack:
        if "exclusive_rabbitmq" not in request.fixturenames:
            stack.enter_context(server_lock(exclusive=False))
        async for build in _make(amqp_url):
            yield build


async def _make(amqp_url: str) -> AsyncIterator[Make]:
    made: list[RabbitMQBroker] = []

    def build(**options: Any) -> RabbitMQBroker:
        options.setdefault("prefix", CONTRACT_PREFIX)
        options.setdefault("connection_name", f"taskflow-test {CONTRACT_PREFIX} in-process")
        broker = RabbitMQBroker(amqp_url, **options)
        made.append(broker)
        return broker

    yield build
    for broker in made:
        await broker.close()
    declared = set().union(*(b._declarer.declared for b in made)) if made else set()
    await anyio.to_thread.run_sync(lambda: delete_queues(amqp_url, CONTRACT_PREFIX, declared))


# -- construction -------------------------------------------------------------


def test_url_repr_and_options() -> None:
    broker = broker_from_url("amqp://user:s3cret@example.com:5672/vh", queue_type="quorum")
    assert isinstance(broker, RabbitMQBroker) and broker.queue_type == "quorum"
    assert "s3cret" not in repr(broker) and "user:***@example.com" in repr(broker)
    with pytest.raises(ValueError, match="queue_type"):
        RabbitMQBroker(queue_type="stream")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RedisResults"):
        RabbitMQBroker(results=True)


def test_delay_units_and_routing_keys() -> None:
    assert delay_units(0) == 0
    assert delay_units(0.001) == 1
    assert delay_units(0.6) == 600 // UNIT_MS
    assert delay_units(0.6001) == 600 // UNIT_MS + 1
    key = routing_key(0b101, "ab")
    assert key.endswith(".1.0.1.ab") and key.count(".") == 26


def test_dead_letters_written_by_rabbitmq_get_a_reason() -> None:
    when = time.time() - 5

    def got(headers: dict[str, Any]) -> Any:
        properties = SimpleNamespace(message_id="m1", headers=headers)
        return SimpleNamespace(header=SimpleNamespace(properties=properties), body=b"x")

    import datetime as dt

    death = {"reason": "delivery_limit", "time": dt.datetime.fromtimestamp(when, dt.UTC)}
    record = dead_record(got({"x-death": [death]}))
    assert record.reason.startswith("delivery_limit_exceeded") and record.id == "m1"
    assert abs(record.dead_at - when) < 1
    assert dead_record(got({"x-tf-reason": "own", "x-tf-dead-at": when})).reason == "own"


async def test_dead_letters_keep_their_time_to_the_millisecond(make: Make, queue: str) -> None:
    broker = make()

    @broker.actor(queue=queue)
    async def echo(x: int) -> int:
        return x

    async with broker:
        sent = await echo.send(1)
        [d] = await take(broker, queue)
        before = time.time()
        await d.nack("failed: for the test")
        after = time.time()
        [dead] = await broker.dead_letters(queue)
        assert dead.id == sent.id
        # An AMQP float is 32 bits: a unix time in one is off by up to 64 s.
        assert before - 0.001 <= dead.dead_at.timestamp() <= after + 0.001
        names = await broker._declarer.ensure(queue)

        async def peek(channel: Any) -> Any:
            got = await channel.basic_get(names.dead, no_ack=False)
            return got.header.properties.headers[H_DEAD_AT]

        stored = await broker._link.on_fresh_channel(peek, "peek")
        assert isinstance(stored, int) and before * 1000 - 1 <= stored <= after * 1000 + 1


def test_dead_letter_times_written_as_seconds_still_read() -> None:
    def got(headers: dict[str, Any]) -> Any:
        properties = SimpleNamespace(message_id="m1", headers=headers)
        return SimpleNamespace(header=SimpleNamespace(properties=properties), body=b"x")

    assert dead_record(got({H_REASON: "r", H_DEAD_AT: 1_700_000_000.0})).dead_at == 1_700_000_000
    ms = dead_record(got({H_REASON: "r", H_DEAD_AT: 1_700_000_000_123})).dead_at
    assert ms == 1_700_000_000.123


# -- failures that must be loud -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_unreachable_server_raises_within_send_timeout() -> None:
    broker = RabbitMQBroker(f"amqp://guest:s3cret@127.0.0.1:{_free_port()}/", send_timeout=2)

    @broker.actor(queue="nowhere")
    async def noop() -> None: ...

    start = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        await noop.send()
    assert time.monotonic() - start < 3
    assert "s3cret" not in str(info.value)


async def test_amqps_verifies_the_server_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
    command += ["-addext", "subjectAltName=DNS:localhost"]
    await anyio.run_process(command)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handshakes: list[bool] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshakes.append(True)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        untrusted = RabbitMQBroker(f"amqps://guest:s3cret@localhost:{port}/", send_timeout=3)
        with pytest.raises(BrokerUnavailable) as info:
            await untrusted.connect()
        assert "certificate verify failed" in str(info.value).lower()
        assert "s3cret" not in str(info.value)
        assert not handshakes  # the client refused before the TLS session came up

        trusted = RabbitMQBroker(
            f"amqps://guest:s3cret@localhost:{port}/",
            send_timeout=3,
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )
        with pytest.raises(BrokerUnavailable) as info:
            await trusted.connect()  # TLS is fine; the fake server speaks no AMQP
        assert "certificate" not in str(info.value).lower()
        assert handshakes
    finally:
        server.close()
        await server.wait_closed()


async def test_unroutable_send_raises_then_the_queue_is_declared_again(
    make: Make, queue: str
) -> None:
    broker = make()

    @broker.actor(queue=queue)
    async def noop() -> None: ...

    async with broker:
        await noop.send()
        await broker.delete_queue(queue)
        broker._declarer.ensured[queue] = broker._declarer.topology.names(
            queue
        )  # as if declared earlier
        with pytest.raises(Unroutable, match="unroutable"):
            await noop.send()
        await noop.send()
        assert (await broker.stats(queue)).ready == 1


async def test_negative_confirm_raises_publish_rejected(make: Make, queue: str) -> None:
    broker = make()

    @broker.actor(queue=queue)
    async def noop() -> None: ...

    name = f"tf-test-{queue}"
    async with broker:
        await noop.send()
        pattern = f"^{CONTRACT_PREFIX.replace('.', '[.]')}{queue}$"
        policy = '{"max-length": 1, "overflow": "reject-publish"}'
        await anyio.to_thread.run_sync(
            lambda: rabbitmqctl("set_policy", name, pattern, policy, "--apply-to", "queues")
        )
        try:
            with anyio.fail_after(20):
                while True:  # the queue applies the policy on its own schedule
                    try:
                        await noop.send()
                    except PublishRejected:
                        break
                    await broker.purge(queue)
                    await noop.send()
        finally:
            await anyio.to_thread.run_sync(lambda: rabbitmqctl("clear_policy", name))
        assert (await broker.stats(queue)).ready == 1


async def test_memory_alarm_blocks_publishing_until_send_timeout(
    exclusive_rabbitmq: None, make: Make, queue: str
) -> None:
    broker = make(send_timeout=1.5)

    @broker.actor(queue=queue)
    async def noop() -> None: ...

    async with broker:
        await noop.send()
        output = await anyio.to_thread.run_sync(lambda: rabbitmqctl("eval", RAISE_ALARM))
        watermark, alarms = output.split("\n", 1)
        try:
            assert "memory" in alarms  # the fault is real
            start = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="unreachable or blocked"):
                await noop.send()
            assert time.monotonic() - start < 3
        finally:
            restore = f"vm_memory_monitor:set_vm_memory_high_watermark({watermark.strip()})."
            await anyio.to_thread.run_sync(lambda: rabbitmqctl("eval", restore))
        # The blocked publish was never confirmed; after the alarm it may or
        # may not have been stored, and sending works again.
        await noop.send()
        assert (await broker.stats(queue)).ready in (2, 3)


def _unacked(name: str) -> tuple[int, int]:
    """(messages, unacked) of RabbitMQ queue ``name``, read through rabbitmqctl."""
    out = rabbitmqctl("list_queues", "-q", "name", "messages", "messages_unacknowledged")
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"no queue {name}")


async def test_memory_alarm_blocks_sends_but_not_the_acks_that_drain_the_backlog(
    exclusive_rabbitmq: None, make: Make, queue: str
) -> None:
    broker = make(send_timeout=1.5)
    done: list[int] = []

    @broker.actor(queue=queue)
    async def work(i: int) -> None:
        await anyio.sleep(0.005)
        done.append(i)

    async with broker:
        await work.send_many([(i,) for i in range(300)])
        output = await anyio.to_thread.run_sync(lambda: rabbitmqctl("eval", RAISE_ALARM))
        watermark, alarms = output.split("\n", 1)
        try:
            assert "memory" in alarms  # the fault is real
            async with Worker(broker, [queue], concurrency=5, prefetch=5):
                # A send from this process is blocked, which blocks the
                # connection it publishes on ...
                with pytest.raises(BrokerUnavailable, match="unreachable or blocked"):
                    await work.send(-1)
                # ... yet the backlog drains: the acks travel on another one.
                name = broker._declarer.topology.names(queue).main
                with anyio.fail_after(20):
                    while len(done) < 300 or await anyio.to_thread.run_sync(_unacked, name) != (
                        0,
                        0,
                    ):
                        await anyio.sleep(0.1)
        finally:
            restore = f"vm_memory_monitor:set_vm_memory_high_watermark({watermark.strip()})."
            await anyio.to_thread.run_sync(lambda: rabbitmqctl("eval", restore))
        assert sorted(done) == list(range(300))


# -- delays -----------------------------------------------------------------------


async def test_short_delays_do_not_wait_behind_long_ones(make: Make, queue: str) -> None:
    broker = make()

    @broker.actor(queue=queue)
    async def echo(x: int) -> int:
        return x

    async with broker:
        await echo.send_with_options(args=(1,), delay=3600)
        await echo.send_with_options(args=(2,), delay=40)
        start = time.monotonic()
        short = await echo.send_with_options(args=(3,), delay=0.3)
        assert (await broker.stats(queue)).delayed == 3
        [d] = await take(broker, queue, timeout=5)
        assert d.message.id == short.id and 0.3 <= time.monotonic() - start < 1.5
        await d.ack()
        assert (await broker.stats(queue)).delayed == 2


async def test_delays_longer_than_one_ladder_pass_go_round_again(make: Make, queue: str) -> None:
    broker = make()

    @broker.actor(queue=queue)
    async def echo(x: int) -> int:
        return x

    async with broker:
        names = await broker._declarer.ensure(queue)
        # A delay past the ladder's range waits the longest pass and carries the rest.
        far = await echo.send_with_options(args=(1,), delay=MAX_DELAY + 1.5)
        top = names.delays[-1]

        async def peek(channel: Any) -> Any:
            got = await channel.basic_get(top, no_ack=False)
            return got.header.properties

        properties = await broker._link.on_fresh_channel(peek, "peek")
        assert properties.message_id == far.id
        assert 1490 <= properties.headers[H_DELAY_LEFT] <= 1500
        # A message at the end of a pass with time left goes round again.
        body = broker.codec.encode(echo.message(2))
        start = time.monotonic()
        await broker._publisher.publish(
            names, body, message_id="again", priority=0, headers={H_DELAY_LEFT: 400}
        )
        [d] = await take(broker, queue, timeout=5)
        assert d.message.args == (2,)
        assert time.monotonic() - start >= 0.4 and d.delivery_count == 1
        await d.ack()


# -- delivery counts and dropped connections ---------------------------------------


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_deliveries_lost_with_their_connection_count(
    make: Make, queue: str, queue_type: str
) -> None:
    producer = make(queue_type=queue_type)

    @producer.actor(queue=queue)
    async def echo(x: int) -> int:
        return x

    async with producer:
        sent = await echo.send(1)
        for expected in (1, 2, 3):
            consumer = make(queue_type=queue_type)
            async with consumer:
                [d] = await take(consumer, queue)
                assert d.message.id == sent.id and d.delivery_count == expected
            # Closing the connection without an ack is what a crash does.
        [d] = await take(producer, queue)
        assert d.delivery_count == 4 and d.redelivered
        await d.ack()


async def test_ack_on_a_dropped_connection_raises_lease_lost(make: Make, queue: str) -> None:
    marker = f"lease-{queue}"
    broker = make(connection_name=f"taskflow-test {marker}")

    @broker.actor(queue=queue)
    async def echo(x: int) -> int:
        return x

    async with broker:
        sent = await echo.send(1)
        [d] = await take(broker, queue)
        # Its two connections: consuming and publishing.
        assert await anyio.to_thread.run_sync(close_connections, marker) == 2
        with pytest.raises(LeaseLost):
            await d.ack()
        [again] = await take(broker, queue, timeout=15)  # after aio-pika reconnected
        assert again.message.id == sent.id and again.delivery_count == 2
        await again.ack()
        assert await broker.stats(queue) == (0, 0, 0, 0)


async def _apply_policy(name: str, pattern: str, definition: str) -> None:
    """Set a queue policy and wait until the queue reports it applied."""
    await anyio.to_thread.run_sync(
        lambda: rabbitmqctl("set_policy", name, pattern, definition, "--apply-to", "queues")
    )
    with anyio.fail_after(20):
        while name not in await anyio.to_thread.run_sync(
            lambda: rabbitmqctl("list_queues", "-q", "name", "policy")
        ):
            await anyio.sleep(0.1)


async def test_failed_republish_of_a_redelivery_is_handed_back(
    make: Make, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    producer = make()

    @producer.actor(queue=queue)
    async def echo(x: int) -> int:
        return x

    policy = f"tf-test-full-{queue}"
    caplog.set_level(logging.INFO, "taskflow.brokers.rabbitmq")
    async with producer:
        first, second = await echo.send(0), await echo.send(1)
        holder = make()
        async with holder:
            [d] = await take(holder, queue)
            assert d.message.id == first.id
            # The queue takes no more messages while one is ready: RabbitMQ
            # will refuse the copy a classic-queue redelivery is republished as.
            pattern = f"^{CONTRACT_PREFIX.replace('.', '[.]')}{queue}$"
            await _apply_policy(policy, pattern, '{"max-length": 1, "overflow": "reject-publish"}')
        # The holder left without an ack: `first` is back, flagged redelivered.
        consumer = make(send_timeout=2)
        got: list[Any] = []
        try:
            async with consumer, anyio.create_task_group() as tg:

                async def consume() -> None:
                    got.extend(await take(consumer, queue, 2, prefetch=1, timeout=30))

                tg.start_soon(consume)
                with anyio.fail_after(15):
                    while f"could not republish message {first.id}" not in caplog.text:
                        await anyio.sleep(0.05)  # the fault happened
                await anyio.to_thread.run_sync(lambda: rabbitmqctl("clear_policy", policy))
                with anyio.fail_after(15):
                    while len(got) < 2:
                        await anyio.sleep(0.05)
                for d in got:
                    await d.ack()
        finally:
            with suppress(RuntimeError):  # cleared already
                await anyio.to_thread.run_sync(lambda: rabbitmqctl("clear_policy", policy))
        # Handed back rather than held until the channel closes: both arrive,
        # and the hand-backs did not count as deliveries.
        assert {(d.message.id, d.delivery_count) for d in got} == {(first.id, 2), (second.id, 1)}
        # The producer consumes nothing: its unacked figure comes from the
        # management statistics, which join() waits to see settle.
        await producer.join(queue, timeout=40)
        assert await producer.stats(queue) == (0, 0, 0, 0)


async def test_an_ack_that_its_closed_channel_swallowed_raises_lease_lost(
    make: Make, queue: str
) -> None:
    marker = f"swallow-{queue}"
    broker = make(connection_name=f"taskflow-test {marker}")

    @broker.actor(queue=queue)
    async def echo(x: int) -> int:
        return x

    async with broker:
        sent = await echo.send(1)
        [d] = await take(broker, queue)
        receipt: Any = d._receipt
        consumer, channel = receipt._consumer, receipt._message.channel
        # Hold the ack after its channel check, where it waits while a
        # consumer is being renewed, and drop the connection meanwhile.
        consumer._renewed.clear()
        acking = asyncio.get_running_loop().create_task(d.ack())
        await anyio.sleep(0.05)
        assert await anyio.to_thread.run_sync(close_connections, marker) >= 1
        with anyio.fail_after(10):
            while not channel.is_closed:
                await anyio.sleep(0.01)
        consumer._renewed.set()
        with pytest.raises(LeaseLost):  # not reported as done
            await acking
        [again] = await take(broker, queue, timeout=15)  # it was not acked: back it comes
        assert again.message.id == sent.id and again.delivery_count == 2
        await again.ack()


# -- long tasks ----------------------------------------------------------------------


async def test_consumer_timeout_is_checked_against_time_limits(
    make: Make, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make(consumer_timeout=10)

    @broker.actor(queue=queue, time_limit=20)
    async def long() -> None: ...

    async with broker:
        with caplog.at_level(logging.WARNING, "taskflow.brokers.rabbitmq"):
            # The warning comes when the consumer starts; stop consuming once it is logged.
            with anyio.move_on_after(15):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(nothing_within, broker, queue, 14.0)
                    while "consumer_timeout < time_limit" not in caplog.text:
                        await anyio.sleep(0.05)
                    tg.cancel_scope.cancel()
        assert "consumer_timeout < time_limit" in caplog.text and "20 s" in caplog.text
        broker._link.server_version = (3, 12, 0)
        assert broker._consumer_arguments(queue, broker._longest_time_limit(queue)) == {
            "x-consumer-timeout": 100_000
        }
        broker._link.server_version = (3, 10, 8)
        caplog.clear()
        other = f"{queue}-fits"

        @broker.actor(queue=other, time_limit=8)
        async def short() -> None: ...

        with caplog.at_level(logging.WARNING, "taskflow.brokers.rabbitmq"):
            assert broker._consumer_arguments(other, broker._longest_time_limit(other)) == {}
        assert "consumer_timeout" not in caplog.text


# -- poison that raises, through a worker ---------------------------------------------


async def test_poison_is_retried_then_dead_lettered_and_replayable(make: Make, queue: str) -> None:
    broker = make()
    runs: dict[int, int] = {}
    fixed = False

    @broker.actor(queue=queue, max_retries=3, min_backoff=0.05, max_backoff=0.1)
    async def job(i: int) -> None:
        runs[i] = runs.get(i, 0) + 1
        if i % 10 == 0 and not fixed:
            raise ValueError(f"poison {i}")

    async with broker:
        await job.send_many([(i,) for i in range(50)])
        async with Worker(broker, [queue], concurrency=10):
            with anyio.fail_after(30):
                while (await broker.stats(queue)).dead < 5:
                    await anyio.sleep(0.05)
            await broker.join(queue, timeout=10)
        assert {i: n for i, n in runs.items() if i % 10 == 0} == dict.fromkeys(range(0, 50, 10), 4)
        assert all(n == 1 for i, n in runs.items() if i % 10)
        dead = await broker.dead_letters(queue)
        assert len(dead) == 5
        assert all(d.reason.startswith("max_retries_exceeded: ValueError") for d in dead)
        fixed = True
        assert await broker.requeue_dead(queue) == 5
        async with Worker(broker, [queue], concurrency=10):
            await broker.join(queue, timeout=10)
        assert all(runs[i] == 5 for i in range(0, 50, 10))
        assert await broker.stats(queue) == (0, 0, 0, 0)


async def test_consumer_survives_its_queue_being_deleted(
    make: Make, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker, admin = make(), make()
    seen: list[int] = []

    @broker.actor(queue=queue, name="collect")
    async def collect(x: int) -> None:
        seen.append(x)

    async with broker, admin:
        await collect.send(1)
        async with Worker(broker, [queue], concurrency=2):
            with anyio.fail_after(10):
                while seen != [1]:
                    await anyio.sleep(0.02)
            await admin.delete_queue(queue)  # RabbitMQ cancels the consumer
            with anyio.fail_after(10):
                while True:  # the next send declares the queue again ...
                    try:
                        await collect.send(2)
                        break
                    except Unroutable:
                        await anyio.sleep(0.05)
                while seen != [1, 2]:  # ... and the consumer is back on it
                    await anyio.sleep(0.02)
    assert "cancelled by the broker" in caplog.text  # the fault happened


async def test_sends_without_confirms_when_asked(make: Make, queue: str) -> None:
    broker = make(confirm_delivery=False)

    @broker.actor(queue=queue)
    async def echo(x: int) -> int:
        return x

    async with broker:
        sent = await echo.send_many([(i,) for i in range(20)])
        unconfirmed = broker._publisher.unconfirmed
        assert unconfirmed is not None and not unconfirmed.publisher_confirms
        got = await take(broker, queue, 20, prefetch=20)
        assert [d.message.id for d in got] == [m.id for m in sent]
        for d in got:
            await d.ack()
