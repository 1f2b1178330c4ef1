"""The RedisBroker on a real 3-master Redis Cluster started by the test (DESIGN.md §10.8).

The cluster (``tests.apps.redis_rigs.ClusterRig``) is shared by the tests of
this module, each in namespaces of its own, and killed after them. Workers
are real ``python -m taskflow worker`` processes; every message is counted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from taskflow import Worker, broker_from_url
from taskflow.brokers.redis import RedisBroker
from taskflow.brokers.redis._connection import parse_target
from tests.apps.redis_app import LEDGER_ENV, NAMESPACE_ENV, OPTIONS_ENV, URL_ENV, build, tally_ids
from tests.apps.redis_rigs import ClusterRig, client, cmd, collect_leaks
from tests.cli.procs import WorkerCli

# -- URLs (no server) ---------------------------------------------------------


def test_cluster_and_sentinel_urls_are_parsed() -> None:
    t = parse_target("redis+cluster://u:p%40ss@h1:7000,h2:7001/0")
    assert (t.kind, t.nodes, t.credentials()) == (
        "cluster",
        (("h1", 7000), ("h2", 7001)),
        {"username": "u", "password": "p@ss"},
    )
    assert parse_target("redis://h1:7000/0", cluster=True).kind == "cluster"
    s = parse_target("rediss+sentinel://s1:26379,s2/mymaster/3")
    assert (s.kind, s.nodes, s.service, s.db, s.tls) == (
        "sentinel",
        (("s1", 26379), ("s2", 26379)),
        "mymaster",
        3,
        True,
    )
    assert parse_target("redis://h:1/2").kind == "single"


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis+cluster://h1:7000/3", "database 0 only"),
        ("redis+sentinel://s1:26379/", "no master name"),
        ("redis://h1:1,h2:2/0", "several hosts"),
        ("redis+cluster://h1:x/0", "bad host:port"),
        ("redis+shard://h1/0", "unknown Redis URL scheme"),
    ],
)
def test_bad_cluster_urls_are_clear_errors(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_target(url)


def test_broker_from_url_understands_the_schemes() -> None:
    b = broker_from_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/0")
    assert isinstance(b, RedisBroker)
    assert b.target.kind == "cluster"
    s = broker_from_url("redis+sentinel://127.0.0.1:26379/mymaster/0", wait_replicas=1)
    assert isinstance(s, RedisBroker)
    assert (s.target.kind, s.wait_replicas) == ("sentinel", 1)
    with pytest.raises(ValueError, match="not supported on a Redis Cluster"):
        RedisBroker("redis://127.0.0.1:7000/0", cluster=True, wait_replicas=1)


# -- on a real cluster ---------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_leaks_left() -> Iterator[None]:
    yield
    collect_leaks()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterRig]:
    rig = ClusterRig(tmp_path_factory.mktemp("cluster"))
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()


@pytest.fixture
async def brokers() -> AsyncIterator[list[RedisBroker]]:
    made: list[RedisBroker] = []
    yield made
    for b in made:
        await b.close()


def _namespaces_on_every_node(rig: ClusterRig) -> dict[int, str]:
    """One fresh namespace per master, each hashed to that master's slots."""
    found: dict[int, str] = {}
    while len(found) < len(rig.ports):
        ns = f"tf-cl-{uuid.uuid4().hex[:8]}"
        found.setdefault(rig.node_of("{" + ns + "}"), ns)
    return found


async def _until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.05)


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_worker_process_runs_every_message_on_the_cluster(
    cluster: ClusterRig, tmp_path: Path, brokers: list[RedisBroker]
) -> None:
    namespace = f"tf-cl-{uuid.uuid4().hex[:8]}"
    options = {"visibility_timeout": 5.0, "reaper_interval": 0.5}
    producer = build(cluster.url, namespace, options)
    brokers.append(producer)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {
        URL_ENV: cluster.url,
        NAMESPACE_ENV: namespace,
        OPTIONS_ENV: json.dumps(options),
        LEDGER_ENV: str(ledger),
    }
    cli = WorkerCli(
        markers, tmp_path / "w.log", ["tests.apps.redis_app:broker", "--concurrency", "8"], env
    )
    try:
        cli.wait_for_pids(1, timeout=30)
        sent = [m.id for m in await producer.actors["tally"].send_many([()] * 300)]
        await producer.join("work", timeout=60)
        ids = tally_ids(ledger)
        assert sorted(ids) == sorted(sent), cli.output()[-3000:]
    finally:
        cli.kill_everything()
    # Every key of the namespace is on the one master that owns its hash tag.
    home = cluster.node_of("{" + namespace + "}")
    for port in cluster.ports:
        keys = cluster.keys_on(port, "{" + namespace + "}:*")
        assert bool(keys) == (port == home), (port, home, keys)


@pytest.mark.anyio
@pytest.mark.slow
async def test_namespaces_spread_over_the_shards(
    cluster: ClusterRig, brokers: list[RedisBroker]
) -> None:
    per_node = _namespaces_on_every_node(cluster)
    counts: dict[str, int] = {}
    for port, ns in per_node.items():
        b = RedisBroker(cluster.url, namespace=ns, reaper_interval=0.5)
        brokers.append(b)

        @b.actor(queue="q")
        async def count(ns: str = ns) -> None:
            counts[ns] = counts.get(ns, 0) + 1

        await count.send_many([()] * 50)
        assert cluster.keys_on(port, "{" + ns + "}:*"), f"{ns} not stored on {port}"
        async with anyio.create_task_group() as tg:
            await tg.start(Worker(b, concurrency=4, queues=["q"]).run)
            await b.join("q", timeout=30)
            tg.cancel_scope.cancel()
        await b.close()
    assert counts == dict.fromkeys(per_node.values(), 50)
    assert len(set(per_node)) == 3


def _move_slot(cluster: ClusterRig, key: str, to: int) -> None:
    """Migrate ``key``'s slot, keys included, to the master at ``to`` (as a reshard does)."""
    src = cluster.node_of(key)
    a, b = client(src), client(to)
    try:
        slot = int(cmd(a, "CLUSTER", "KEYSLOT", key))
        src_id, dst_id = cmd(a, "CLUSTER", "MYID"), cmd(b, "CLUSTER", "MYID")
        cmd(b, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        cmd(a, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := cmd(a, "CLUSTER", "GETKEYSINSLOT", slot, 1000):
            cmd(a, "MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)
        for port in cluster.ports:
            c = client(port)
            try:
                cmd(c, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            finally:
                c.close()
    finally:
        a.close()
        b.close()


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_namespace_moved_to_another_shard_is_followed(
    cluster: ClusterRig, brokers: list[RedisBroker]
) -> None:
    namespace = f"tf-cl-{uuid.uuid4().hex[:8]}"
    b = RedisBroker(cluster.url, namespace=namespace, reaper_interval=0.5, results=True)
    brokers.append(b)

    @b.actor(queue="q", store_results=True)
    async def double(x: int) -> int:
        return 2 * x

    before = [await double.send(i) for i in range(20)]  # the client learnt the slot map
    tag = "{" + namespace + "}"
    home = cluster.node_of(tag)
    target = next(p for p in cluster.ports if p != home)
    _move_slot(cluster, tag, target)
    assert cluster.node_of(tag) == target
    assert not cluster.keys_on(home, tag + ":*")
    after = [await double.send(i) for i in range(20, 40)]  # MOVED, followed by redis-py
    async with anyio.create_task_group() as tg:
        await tg.start(Worker(b, concurrency=4, queues=["q"]).run)
        await b.join("q", timeout=30)
        values = [await b.get_result(m, timeout=10) for m in before + after]
        tg.cancel_scope.cancel()
    assert values == [2 * i for i in range(40)]
    stats = await b.stats("q")
    assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0)
    # The results spread over the shards: each result's keys have a hash tag of their own.
    holders = [p for p in cluster.ports if cluster.keys_on(p, f"{namespace}:result:*")]
    assert len(holders) >= 2, holders
