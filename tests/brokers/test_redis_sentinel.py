"""The RedisBroker behind Redis Sentinel, and masters that refuse writes for a while (§10.8).

The Sentinel deployment (``tests.apps.redis_rigs.SentinelRig``: a master, a
replica and three sentinels on loopback) is started by the test and killed
after it. A failover is forced with ``SENTINEL FAILOVER`` while a real
worker process runs and a producer sends with ``wait_replicas=1``; every
message whose ``send`` returned is counted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from taskflow import BrokerUnavailable
from taskflow.brokers.redis import RedisBroker
from tests.apps.redis_app import (
    LEDGER_ENV,
    NAMESPACE_ENV,
    OPTIONS_ENV,
    URL_ENV,
    RedisServer,
    build,
    tally_ids,
)
from tests.apps.redis_rigs import SentinelRig, client, cmd, collect_leaks
from tests.cli.procs import WorkerCli

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _no_leaks_left() -> Iterator[None]:
    yield
    collect_leaks()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelRig]:
    rig = SentinelRig(tmp_path / "sentinel")
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path)
    s.start()
    yield s
    s.stop()


def _errors(server: RedisServer, kind: str) -> int:
    """How many ``kind`` error replies (``NOREPLICAS``, ``READONLY``) the server sent."""
    c = server.client()
    try:
        line = c.info("errorstats").get(f"errorstat_{kind}", {})
    finally:
        c.close()
    return int(line.get("count", 0))


async def test_a_sentinel_failover_under_a_running_worker_loses_no_sent_message(
    sentinel: SentinelRig, tmp_path: Path
) -> None:
    namespace = f"tf-sent-{uuid.uuid4().hex[:8]}"
    options = {"visibility_timeout": 4.0, "reaper_interval": 0.5}
    # With one replica, sends wait while the old master resyncs as the new one's replica.
    producer = build(sentinel.url, namespace, {**options, "wait_replicas": 1, "send_timeout": 45})
    ledger, markers = tmp_path / "ledger", tmp_path / "markers"
    ledger.mkdir()
    markers.mkdir()
    env = {
        URL_ENV: sentinel.url,
        NAMESPACE_ENV: namespace,
        OPTIONS_ENV: json.dumps(options),
        LEDGER_ENV: str(ledger),
    }
    cli = WorkerCli(
        markers, tmp_path / "w.log", ["tests.apps.redis_app:broker", "--concurrency", "8"], env
    )
    tally = producer.actors["tally"]
    sent: list[str] = []
    try:
        (pid,) = cli.wait_for_pids(1, timeout=30)
        old = sentinel.current_master()
        async with anyio.create_task_group() as tg:
            done = anyio.Event()

            async def produce() -> None:
                while not done.is_set():
                    sent.extend(m.id for m in await tally.send_many([()] * 5))

            tg.start_soon(produce)
            with anyio.fail_after(30):
                while len(sent) < 100:
                    await anyio.sleep(0.02)
            started = time.monotonic()
            new = await anyio.to_thread.run_sync(sentinel.failover)
            print(f"failover took {time.monotonic() - started:.1f} s")
            at_failover = len(sent)
            with anyio.fail_after(60):  # sends go on, on the new master
                while len(sent) < at_failover + 100:
                    await anyio.sleep(0.02)
            done.set()
        # The fault happened: another server is the master, the old one a replica.
        assert new != old
        assert sentinel.role(old) == "slave"
        await producer.join("work", timeout=60)
        ids = set(tally_ids(ledger))
        missing = set(sent) - ids
        assert not missing, (len(missing), cli.output()[-3000:])
        # The same worker process rode it out (no restart) and ran work after it.
        assert cli.process.poll() is None
        assert cli.pids() == {pid}
    finally:
        cli.kill_everything()
        await producer.close()


@pytest.mark.parametrize(
    ("kind", "refuse", "allow"),
    [
        (
            "NOREPLICAS",
            ("CONFIG", "SET", "min-replicas-to-write", "1"),
            ("CONFIG", "SET", "min-replicas-to-write", "0"),
        ),
        ("READONLY", ("REPLICAOF", "127.0.0.1", "1"), ("REPLICAOF", "NO", "ONE")),
    ],
)
async def test_a_master_refusing_writes_is_an_outage_that_sends_ride_out(
    server: RedisServer, kind: str, refuse: tuple[str, ...], allow: tuple[str, ...]
) -> None:
    broker = RedisBroker(server.url, namespace=f"tf-ro-{uuid.uuid4().hex[:8]}", send_timeout=30)

    @broker.actor(queue="q")
    async def noop() -> None:
        pass

    try:
        await noop.send()  # connected, scripts loaded
        admin = server.client()
        cmd(admin, *refuse)
        before = _errors(server, kind)
        async with anyio.create_task_group() as tg:
            sent = anyio.Event()

            async def send() -> None:
                await noop.send()
                sent.set()

            tg.start_soon(send)
            # The fault happened: the server refused the send at least twice.
            deadline = time.monotonic() + 20
            while _errors(server, kind) < before + 2:
                assert time.monotonic() < deadline, f"no {kind} refusal seen"
                await anyio.sleep(0.02)
            assert not sent.is_set()
            cmd(admin, *allow)
            with anyio.fail_after(20):
                await sent.wait()
        admin.close()
        assert (await broker.stats("q")).ready == 2
    finally:
        await broker.close()


async def test_wait_replicas_refuses_to_confirm_a_send_no_replica_holds(
    server: RedisServer,
) -> None:
    broker = RedisBroker(
        server.url, namespace=f"tf-wait-{uuid.uuid4().hex[:8]}", wait_replicas=1, send_timeout=1.5
    )

    @broker.actor(queue="q")
    async def noop() -> None:
        pass

    try:
        with pytest.raises(BrokerUnavailable, match="replica"):
            await noop.send()
        # Stored on the master once (repeats of the enqueue are idempotent), but not confirmed.
        assert (await broker.stats("q")).ready == 1
    finally:
        await broker.close()


async def test_wait_replicas_confirms_once_the_replica_holds_it(sentinel: SentinelRig) -> None:
    broker = RedisBroker(sentinel.url, namespace=f"tf-wait-{uuid.uuid4().hex[:8]}", wait_replicas=1)

    @broker.actor(queue="q")
    async def noop() -> None:
        pass

    try:
        message = await noop.send()
        # Read from the replica itself: it holds the message once send returned.
        replica = client(sentinel.replica)
        try:
            body = replica.hget("{" + broker.namespace + "}:q:q:body", message.id)
        finally:
            replica.close()
        assert body is not None
    finally:
        await broker.close()
