"""RedisBroker beyond the shared contract: connections, batching, leases, reaper, bad input.

These run in this process against the test Redis (db 15, a namespace per
test) or, where a test stops or reconfigures the server, against a private
``redis-server`` on a 63xx port. The fault tests with worker processes are in
``test_redis_faults.py``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio.connection

from taskflow import (
    BrokerError,
    BrokerUnavailable,
    Delivery,
    LeaseLost,
    ResultFailed,
    Worker,
    broker_from_url,
)
from taskflow.broker import Envelope
from taskflow.brokers.redis import RedisBroker
from tests.apps.redis_app import RedisServer, delete_namespace, free_port, make_certificates
from tests.brokers.test_contract import take

pytestmark = pytest.mark.anyio

Make = Callable[..., RedisBroker]


@pytest.fixture
def make(redis_url: str) -> Iterator[Make]:
    """Build RedisBrokers on the test Redis, in one fresh namespace (deleted afterwards)."""
    namespace = f"tf-test-{uuid.uuid4().hex[:12]}"
    urls: set[str] = set()

    def build(url: str = redis_url, **options: Any) -> RedisBroker:
        urls.add(url)
        options.setdefault("namespace", namespace)
        options.setdefault("reaper_interval", 0.5)
        return RedisBroker(url, **options)

    yield build
    for url in urls:
        if url == redis_url:
            delete_namespace(url, namespace)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path)
    s.start()
    yield s
    s.stop()


def declare(broker: RedisBroker, queue: str) -> Any:
    @broker.actor(queue=queue, max_retries=0)
    async def echo(x: int) -> int:
        return x

    return echo


def raw(broker: RedisBroker, url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def key(broker: RedisBroker, queue: str, part: str) -> str:
    return broker._keys.prefix + f":q:{queue}:{part}"


async def poll(predicate: Callable[[], bool], timeout: float) -> float:
    """Wait until ``predicate()``; return how long it took. Fails after ``timeout``."""
    start = time.monotonic()
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)
    return time.monotonic() - start


# -- URLs, credentials, TLS, server checks ------------------------------------


def test_from_url_masks_the_password_and_verifies_tls() -> None:
    broker = broker_from_url("redis://tf:s3cret@127.0.0.1:6379/15", namespace="x")
    assert isinstance(broker, RedisBroker)
    assert "s3cret" not in repr(broker) and "tf:***@127.0.0.1" in repr(broker)
    tls = RedisBroker("rediss://127.0.0.1:6380/0")
    options = tls._client_options()
    assert options["ssl_cert_reqs"] == "required" and options["ssl_check_hostname"] is True
    assert options["socket_timeout"] > 0 and options["socket_connect_timeout"] > 0
    with pytest.raises(ValueError, match="namespace"):
        RedisBroker(namespace="{bad}")


async def test_unreachable_server_raises_broker_unavailable_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://tf:s3cret@127.0.0.1:{free_port()}/0"
    broker = RedisBroker(url, send_timeout=0.5, connect_timeout=0.2)
    start = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        await broker.connect()
    assert time.monotonic() - start < 3
    assert "s3cret" not in str(info.value) and "s3cret" not in caplog.text
    assert caplog.text.count("lost the connection") == 1


async def test_acl_user_limited_to_its_namespace(server: RedisServer) -> None:
    admin = server.client()
    admin.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", "tf", "on", ">pw-s3cret", "~{acl}:*", "+@all", "-@dangerous", "-@admin"
    )
    broker = RedisBroker(f"redis://tf:pw-s3cret@127.0.0.1:{server.port}/0", namespace="acl")
    echo = declare(broker, "q")
    async with broker:
        sent = await echo.send(1)
        [d] = await take(broker, "q")
        assert d.message.id == sent.id
        await d.nack("checking dead letters")
        assert [x.id for x in await broker.dead_letters("q")] == [sent.id]
        assert await broker.requeue_dead("q") == 1 and await broker.purge("q") == 1
        async with Worker(broker, ["q"]):
            await echo.send(2)
            await broker.join("q", timeout=10)
        assert await broker.stats("q") == (0, 0, 0, 0)
    wrong = RedisBroker(f"redis://tf:nope-s3cret@127.0.0.1:{server.port}/0", namespace="acl")
    with pytest.raises(BrokerError) as info:
        await wrong.connect()
    assert "s3cret" not in str(info.value)
    outside = RedisBroker(f"redis://tf:pw-s3cret@127.0.0.1:{server.port}/0", namespace="other")
    async with outside:
        with pytest.raises(BrokerError, match="NOPERM|permission"):
            await declare(outside, "q").send(1)
    admin.close()


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    return make_certificates(tmp_path)


async def test_tls_verifies_the_certificate_and_the_host_name(
    tmp_path: Path, certificates: dict[str, Path]
) -> None:
    server = RedisServer(tmp_path, tls=certificates)
    server.start()
    try:
        ca = {"ssl_ca_certs": str(certificates["ca"])}
        good = RedisBroker(f"rediss://localhost:{server.port}/0", redis_options=ca)
        echo = declare(good, "q")
        async with good:
            sent = await echo.send(1)
            [d] = await take(good, "q")
            assert d.message.id == sent.id
            await d.ack()
        unknown_ca = RedisBroker(f"rediss://localhost:{server.port}/0", send_timeout=0.3)
        with pytest.raises(BrokerError, match="(?i)certificate verify failed"):
            await unknown_ca.connect()
        wrong_host = RedisBroker(
            f"rediss://127.0.0.1:{server.port}/0", send_timeout=0.3, redis_options=ca
        )
        with pytest.raises(BrokerError, match="(?i)certificate verify failed|hostname|match"):
            await wrong_host.connect()
    finally:
        server.stop()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "volatile-ttl", "noeviction"])
async def test_warns_when_redis_may_evict_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    server = RedisServer(tmp_path, "--maxmemory", "100mb", "--maxmemory-policy", policy)
    server.start()
    try:
        async with RedisBroker(server.url):
            pass
    finally:
        server.stop()
    warned = f"maxmemory-policy {policy}: it may evict" in caplog.text
    assert warned == (policy != "noeviction")


# -- batching -----------------------------------------------------------------


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the writes of every redis-py asyncio connection (one per round trip)."""
    calls: list[int] = []
    original = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        calls.append(1)
        await original(self, command, check_health)

    monkeypatch.setattr(
        redis.asyncio.connection.AbstractConnection, "send_packed_command", counting
    )
    return calls


async def test_send_many_is_one_round_trip(make: Make, queue: str, writes: list[int]) -> None:
    broker = make()
    echo = declare(broker, queue)
    async with broker:
        writes.clear()
        sent = await echo.send_many([(i,) for i in range(2500)])
        assert len(writes) == 1
        writes.clear()
        await echo.send(1)
        assert len(writes) == 1
        assert (await broker.stats(queue)).ready == 2501
        got = await take(broker, queue, 2500, prefetch=1000)
        assert [d.message.id for d in got] == [m.id for m in sent]


async def test_concurrent_sends_share_one_round_trip(
    make: Make, queue: str, writes: list[int]
) -> None:
    broker = make()
    echo = declare(broker, queue)
    async with broker:
        await echo.send(0)  # connected, scripts loaded
        writes.clear()
        sent: list[Any] = []

        async def send(i: int) -> None:
            sent.append(await echo.send(i))

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(send, i)
        # One script call for the hundred (two if a loop turn split them).
        assert 1 <= len(writes) <= 2, len(writes)
        assert len(sent) == 100 and (await broker.stats(queue)).ready == 101
        got = await take(broker, queue, 101, prefetch=200)
        assert {d.message.id for d in got} >= {m.id for m in sent}


async def test_fetch_and_acks_come_in_batches(make: Make, queue: str, writes: list[int]) -> None:
    broker = make()
    echo = declare(broker, queue)
    async with broker:
        await echo.send_many([(i,) for i in range(200)])
        writes.clear()
        deliveries = await take(broker, queue, 200, prefetch=200)
        fetches = len(writes)
        writes.clear()
        async with anyio.create_task_group() as tg:
            for d in deliveries:
                tg.start_soon(d.ack)
        acks = len(writes)
        assert await broker.stats(queue) == (0, 0, 0, 0)
    # One fetch script call; 200 concurrent acks coalesced into a couple of calls.
    assert fetches <= 2 and acks <= 3, (fetches, acks)


async def test_idle_consumer_wakes_at_once(make: Make, queue: str, redis_url: str) -> None:
    broker = make(idle_timeout=10.0, redis_options={"client_name": f"tf-wake-{queue}"})
    echo = declare(broker, queue)
    admin = redis.Redis.from_url(redis_url)

    def blocked() -> bool:
        return any(
            c.get("name") == f"tf-wake-{queue}" and c.get("cmd") == "blpop"
            for c in admin.client_list()
        )

    async with broker:
        for delay in (0.0, 0.4):
            got: list[Delivery] = []
            async with anyio.create_task_group() as tg:

                async def consume(got: list[Delivery]) -> None:
                    got.extend(await take(broker, queue, 1, timeout=5))

                tg.start_soon(consume, got)
                await poll(blocked, 5)
                start = time.monotonic()
                await echo.send_with_options(args=(1,), delay=delay)
            elapsed = time.monotonic() - start
            # idle_timeout is 10 s: only a wake-up, never a poll, explains this.
            assert delay <= elapsed < delay + 1.0, (delay, elapsed)
            await got[0].ack()
    admin.close()


# -- leases, fencing, heartbeats, reaper --------------------------------------


async def test_late_ack_after_lost_lease_is_refused(make: Make, queue: str) -> None:
    first = make(visibility_timeout=0.6, reaper_interval=0.2)
    second = make(visibility_timeout=5)
    echo = declare(first, queue)
    async with first, second:
        sent = await echo.send(1)
        [stale] = await take(first, queue)
        assert await stale.start()  # the worker runs it...
        # ... and the heartbeat of this delivery stalls: its lease runs out.
        first._tables[queue].remove(stale._receipt)  # type: ignore[arg-type]
        [fresh] = await take(second, queue, timeout=5)
        assert fresh.message.id == sent.id and fresh.delivery_count == 2
        for settle in (stale.ack, lambda: stale.retry(0), lambda: stale.nack("x")):
            stale.settled = False
            with pytest.raises(LeaseLost, match="lease expired"):
                await settle()
        assert await second.stats(queue) == (0, 0, 1, 0)
        await fresh.ack()
        assert await second.stats(queue) == (0, 0, 0, 0)


async def test_heartbeat_keeps_leases_while_the_loop_is_blocked(
    make: Make, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make(visibility_timeout=1.0, reaper_interval=0.25)
    other = make()
    echo = declare(broker, queue)
    async with broker, other:
        await echo.send(1)
        [d] = await take(broker, queue)
        time.sleep(3.0)  # noqa: ASYNC251 - an actor blocking the loop three leases long
        assert broker.keeper is not None and broker.keeper.renewals >= 5
        await d.ack()
        assert await broker.stats(queue) == (0, 0, 0, 0)
        with anyio.move_on_after(0.5):
            await take(other, queue, 1)
            pytest.fail("the message was delivered twice")
    assert "event_loop_blocked" in caplog.text


async def test_reaper_returns_orphans_of_a_dead_consumer_on_an_idle_queue(
    make: Make, queue: str, redis_url: str
) -> None:
    crashed = make(visibility_timeout=1.0)
    survivor = make(visibility_timeout=1.0, reaper_interval=0.5)
    echo = declare(crashed, queue)
    admin = redis.Redis.from_url(redis_url)
    async with crashed, survivor:
        await echo.send_many([(i,) for i in range(3)])
        # A consumer that fetched, started one, and died: no heartbeat, no hand-back.
        _, receipts = await crashed._fetch(crashed._queue(queue), 10)
        assert len(receipts) == 3
        assert await receipts[0].start()
        survivor._start_keeper()
        ready, suspects = key(survivor, queue, "ready"), key(survivor, queue, "suspects")
        elapsed = await poll(lambda: (admin.zcard(ready), admin.zcard(suspects)) == (2, 1), 5)
        # Nobody fetched or asked for stats: the reaper did it, in time.
        assert 0.8 <= elapsed <= 1.0 + 0.5 + 0.5, elapsed
        got = {d.message.id: d for d in await take(survivor, queue, 3, prefetch=3)}
        # The started one counts its delivery; the two it never started come back
        # as if never fetched.
        assert got.keys() == {r.message_id for r in receipts}
        counts = [got[r.message_id].delivery_count for r in receipts]
        assert counts == [2, 1, 1]
    admin.close()


async def test_reaper_promotes_delayed_and_drops_old_dead_letters_on_an_idle_queue(
    make: Make, queue: str, redis_url: str
) -> None:
    broker = make(reaper_interval=0.3, dead_letter_ttl=0.5)
    echo = declare(broker, queue)
    admin = redis.Redis.from_url(redis_url)
    async with broker:
        await echo.send(1)
        [d] = await take(broker, queue)
        await d.nack("old")
        await echo.send_with_options(args=(2,), delay=0.5)
        assert admin.zcard(key(broker, queue, "delayed")) == 1
        broker._start_keeper()
        await poll(lambda: admin.zcard(key(broker, queue, "ready")) == 1, 3)
        assert admin.zcard(key(broker, queue, "delayed")) == 0
        await poll(lambda: admin.zcard(key(broker, queue, "dead")) == 0, 3)
        assert admin.hlen(key(broker, queue, "dead_body")) == 0
    admin.close()


async def test_one_reaper_at_a_time(make: Make) -> None:
    brokers = [make(reaper_interval=0.4) for _ in range(3)]
    for b in brokers:
        await b.connect()
    try:
        for b in brokers:
            b._start_keeper()
        await anyio.sleep(2.0)
        runs = [b.keeper.reaper_runs for b in brokers if b.keeper is not None]
    finally:
        for b in brokers:
            await b.close()
    # Each keeper tries every 0.2 s (30 tries in all); the lock lets one run per 0.2 s.
    assert 4 <= sum(runs) <= 12, runs


async def test_hand_back_does_not_count_a_delivery(make: Make, queue: str) -> None:
    broker = make()
    echo = declare(broker, queue)
    async with broker:
        await echo.send_many([(i,) for i in range(5)])
        [first] = await take(broker, queue, 1, prefetch=5)
        rest = await take(broker, queue, 4, prefetch=5)
        assert first.delivery_count == 1
        assert [d.delivery_count for d in rest] == [1, 1, 1, 1]


async def test_large_queues_are_purged_and_requeued_in_chunks(make: Make, queue: str) -> None:
    broker = make()
    echo = declare(broker, queue)
    async with broker:
        await echo.send_many([(i,) for i in range(2500)])
        assert await broker.purge(queue) == 2500
        await echo.send_many([(i,) for i in range(1200)])
        for d in await take(broker, queue, 1200, prefetch=1000):
            await d.nack("all of them")
        assert (await broker.stats(queue)).dead == 1200
        assert len(await broker.dead_letters(queue, limit=5000)) == 1200
        assert await broker.requeue_dead(queue) == 1200
        assert await broker.stats(queue) == (1200, 0, 0, 0)
        assert await broker.purge(queue) == 1200


# -- bad input written straight into Redis ------------------------------------


CANARY = "CANARY-7f3a9"


async def test_bytes_written_straight_into_the_queue_go_to_dead_letters(
    make: Make, queue: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make()
    seen: list[int] = []

    @broker.actor(queue=queue, max_retries=0)
    async def add(x: int, y: int) -> None:
        seen.append(x)

    bad = {
        "random": os.urandom(64) + CANARY.encode(),
        "utf8": b'{"actor": "\xff\xfe' + CANARY.encode() + b'"}',
        "array": b'["' + CANARY.encode() + b'"]',
        "missing": b'{"queue": "q", "args": ["' + CANARY.encode() + b'"]}',
        "deep": b"[" * 100_000,
        "nan": b'{"id": "x", "queue": "q", "actor": "add", "args": [NaN, 1]}',
        "eta": b'{"id":"x","queue":"q","actor":"add","eta":"' + CANARY.encode() + b'"}',
    }
    admin = redis.Redis.from_url(redis_url)
    async with broker:
        await add.send_many([(i, 1) for i in range(20)])
        for n, (name, body) in enumerate(bad.items()):
            # Interleaved with the valid ones: sequence numbers 2, 5, 8 ...
            admin.hset(key(broker, queue, "body"), name, body)
            admin.zadd(key(broker, queue, "ready"), {f"{3 * n + 2:016d}{name}": 0})
        admin.zadd(key(broker, queue, "ready"), {"0000000000000009no-body": 0, "short": 0})
        async with Worker(broker, [queue], concurrency=4) as worker:
            await broker.join(queue, timeout=20)
        assert worker.processed == 20 and sorted(seen) == list(range(20))
        dead = {d.id: d for d in await broker.dead_letters(queue, limit=100)}
    admin.close()
    assert set(dead) == {*bad, "no-body", ""}
    for name, body in bad.items():
        assert dead[name].body == body and dead[name].reason.startswith("decode_error")
    assert CANARY not in caplog.text


async def test_an_oversized_body_never_leaves_redis(make: Make, queue: str, redis_url: str) -> None:
    broker = make(max_message_size=256 * 1024)
    declare(broker, queue)
    admin = redis.Redis.from_url(redis_url)
    async with broker:
        admin.hset(key(broker, queue, "body"), "huge", b"x" * (20 * 1024 * 1024))
        admin.zadd(key(broker, queue, "ready"), {"0000000000000001huge": 0})
        tracemalloc.start()
        try:
            with anyio.move_on_after(0.5):
                await take(broker, queue, 1)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        [dead] = await broker.dead_letters(queue)
    admin.close()
    assert dead.reason.startswith("too_large: 20971520 bytes")
    assert peak < 2 * 1024 * 1024, peak


# -- the server going away ----------------------------------------------------


async def test_send_raises_broker_unavailable_while_redis_is_down(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    broker = RedisBroker(server.url, send_timeout=1.0)
    echo = declare(broker, "q")
    async with broker:
        await echo.send(1)
        server.kill()
        start = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await echo.send(2)
        assert time.monotonic() - start < 2.5
        server.start()
        await echo.send(3)
        assert (await broker.stats("q")).ready == 2  # the AOF kept the first
    assert caplog.text.count("producer lost the connection") == 1


async def test_send_to_a_frozen_server_fails_within_send_timeout(server: RedisServer) -> None:
    broker = RedisBroker(server.url, send_timeout=1.0)
    echo = declare(broker, "q")
    assert server.process is not None
    async with broker:
        await echo.send(1)
        os.kill(server.process.pid, signal.SIGSTOP)  # frozen: no RST, no answer
        try:
            start = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="did not take send for 1.0 s"):
                await echo.send(2)
            elapsed = time.monotonic() - start
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        await echo.send(3)
        # The frozen send may have landed after all (at least once), never twice.
        assert (await broker.stats("q")).ready in (2, 3)
    assert 1.0 <= elapsed < 2.0, elapsed


async def test_consumer_resumes_after_redis_restarts(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "taskflow.brokers.redis")
    broker = RedisBroker(server.url, visibility_timeout=5, reaper_interval=0.5, send_timeout=5)
    done: list[int] = []

    @broker.actor(queue="q")
    async def work(x: int) -> None:
        done.append(x)

    async with broker, Worker(broker, ["q"], concurrency=4):
        await work.send(1)
        delayed = await work.send_with_options(args=(2,), delay=1.5)
        await poll(lambda: done == [1], 5)
        server.shutdown()
        await anyio.sleep(0.5)  # the outage itself
        server.start()
        await work.send(3)
        await poll(lambda: sorted(done) == [1, 2, 3], 10)
        await broker.join("q", timeout=5)
    assert delayed.id  # sent before the outage, kept by the AOF, run once after it
    assert done.count(2) == 1
    assert caplog.text.count("consumer of q lost the connection") == 1
    assert "consumer of q reconnected" in caplog.text


def thread_cpu_seconds(native_id: int) -> float:
    """CPU time (user + system) a thread of this process has used, from /proc."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def count_connections(port: int, seconds: float) -> int:
    """Listen on ``port`` for ``seconds``, closing every connection at once; return how many came."""
    count = 0

    async def hang_up(stream: anyio.abc.SocketStream) -> None:
        nonlocal count
        count += 1
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    with anyio.move_on_after(seconds):
        await listener.serve(hang_up)
    await listener.aclose()
    return count


async def test_keeper_backs_off_while_redis_is_down(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    broker = RedisBroker(
        server.url, visibility_timeout=3.0, heartbeat_interval=0.5, reaper_interval=0.2
    )
    started, release = anyio.Event(), anyio.Event()
    runs: list[int] = []

    @broker.actor(queue="q", max_retries=0, time_limit=None)
    async def hold() -> None:
        runs.append(1)
        started.set()
        await release.wait()

    async with broker, Worker(broker, ["q"], concurrency=2):
        await hold.send()
        with anyio.fail_after(5):
            await started.wait()
        keeper = broker.keeper
        assert keeper is not None and keeper._thread.native_id is not None
        # Given: the keeper renews a running message's lease; then Redis goes away.
        server.shutdown()
        assert not server.ping()
        await poll(lambda: "lease heartbeat lost the connection" in caplog.text, 5)
        # When: for three seconds every connection attempt is counted (and hung up on).
        cpu_before = thread_cpu_seconds(keeper._thread.native_id)
        attempts = await count_connections(server.port, 3.0)
        cpu = thread_cpu_seconds(keeper._thread.native_id) - cpu_before
        # Then Redis returns; the keeper says so once and renews again.
        server.start()
        renewals = keeper.renewals
        await poll(lambda: keeper.renewals > renewals, 5)
        release.set()
        await broker.join("q", timeout=10)
    # Backoff: a few attempts per second from the keeper and the consumer
    # together (a busy loop made thousands), and next to no CPU.
    assert 3 <= attempts <= 40, attempts
    assert cpu < 0.3, cpu
    assert caplog.text.count("lease heartbeat lost the connection") == 1
    assert caplog.text.count("lease heartbeat reconnected") == 1
    assert runs == [1]  # the lease outlived the outage: run once


async def test_a_body_the_fetch_script_refuses_as_too_large_fails_its_result_at_once(
    make: Make,
) -> None:
    broker = make(results=True, max_message_size=1024)

    @broker.actor(store_results=True)
    async def work(text: str) -> None:
        pass

    async with broker:
        # Given a body over the limit that reached the server (sent by an older client, say)
        big = work.message("x" * 5000)
        await broker._enqueue("default", [Envelope(big.id, broker.codec.encode(big), 0, 0.0)])
        async with Worker(broker):
            await broker.join("default", timeout=10)
        # Expect its result to fail at once, with the reason
        with anyio.fail_after(2), pytest.raises(ResultFailed) as failed:
            await big.result(timeout=30)
    assert failed.value.type_name == "MessageTooLarge"
    assert failed.value.message.startswith("too_large: ")
