"""Fault tests for the RedisBroker with real worker processes (RELIABILITY.md S1-S4, S6-S9, S12, S16).

Workers run as ``python -m taskflow worker tests.apps.redis_app:broker`` in
their own process groups; the actors append to a ledger (a file per process,
outside Redis) what they ran, with the server-side delivery count. Each test
first proves its fault happened (a process is gone, the server was down, the
loop was blocked), then counts every message in and out.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from taskflow import BrokerUnavailable
from tests.apps.redis_app import (
    LEDGER_ENV,
    NAMESPACE_ENV,
    OPTIONS_ENV,
    QUEUE,
    URL_ENV,
    RedisServer,
    Row,
    build,
    delete_namespace,
    read_ledger,
    tally_ids,
)
from tests.cli.procs import WorkerCli, alive, proc_status

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


class Rig:
    """A namespace, a ledger, the test's own broker and the worker processes it starts."""

    def __init__(self, url: str, tmp_path: Path, **options: Any) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.namespace = f"tf-faults-{uuid.uuid4().hex[:12]}"
        self.options: dict[str, Any] = {"visibility_timeout": 2.0, "reaper_interval": 0.5}
        self.options.update(options)
        self.ledger = tmp_path / "ledger"
        self.ledger.mkdir(parents=True)
        self.broker = build(url, self.namespace, self.options)
        self.workers: list[WorkerCli] = []

    def actor(self, name: str) -> Any:
        return self.broker.actors[name]

    def rows(self, event: str | None = None) -> list[Row]:
        return [r for r in read_ledger(self.ledger) if event is None or r[3] == event]

    def start(self, name: str, *args: str) -> WorkerCli:
        markers = self.tmp_path / f"markers-{name}"
        markers.mkdir()
        env = {
            URL_ENV: self.url,
            NAMESPACE_ENV: self.namespace,
            OPTIONS_ENV: json.dumps(self.options),
            LEDGER_ENV: str(self.ledger),
        }
        cli = WorkerCli(
            markers, self.tmp_path / f"{name}.log", ["tests.apps.redis_app:broker", *args], env
        )
        self.workers.append(cli)
        return cli

    def kill_everything(self) -> None:
        for cli in self.workers:
            cli.kill_everything()


@pytest.fixture
async def rig_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(url: str, **options: Any) -> Rig:
        rig = Rig(url, tmp_path / f"rig{len(rigs)}", **options)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.kill_everything()
        await rig.broker.close()
        delete_namespace(rig.url, rig.namespace)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path)
    s.start()
    yield s
    s.stop()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 20 ms; return the seconds it took; fail after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.02)
    return time.monotonic() - start


def by_id(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(r)
    return out


# -- S3: SIGKILL mid-task -----------------------------------------------------


async def test_sigkill_mid_task_messages_come_back_on_an_idle_queue(
    redis_url: str, rig_factory: Callable[..., Rig]
) -> None:
    rig = rig_factory(redis_url, visibility_timeout=2.0, reaper_interval=0.5)
    record = rig.actor("record")
    async with rig.broker:
        # Given: worker A runs six long messages; worker B stands by, idle.
        victim_cli = rig.start("a", "--concurrency", "6")
        sent = await record.send_many([(60_000, 0)] * 6)
        await until(lambda: len(rig.rows("start")) == 6, 20, "A to start all six")
        [victim] = {r[2] for r in rig.rows()}
        standby = rig.start("b", "--concurrency", "8")
        standby.wait_for_pids(1)
        assert (await rig.broker.stats(QUEUE)).ready == 0
        # When: A's whole process group is SIGKILLed (no restart, no goodbye).
        os.killpg(victim_cli.pid, signal.SIGKILL)
        killed_at = time.time()
        await until(lambda: not alive(victim), 5, "A's child to die")
        # Expect: B runs all six again within visibility_timeout + reaper_interval,
        # on a queue that nothing else touches.
        await until(lambda: len(rig.rows("done")) == 6, 10, "B to finish all six")
        redelivered_within = max(r[4] for r in rig.rows("start") if r[1] == 2) - killed_at
        await rig.broker.join(QUEUE, timeout=10)
        assert await rig.broker.stats(QUEUE) == (0, 0, 0, 0)
    assert redelivered_within <= 2.0 + 0.5 + 1.0, redelivered_within
    runs = by_id(rig.rows())
    assert set(runs) == {m.id for m in sent}
    for rows in runs.values():
        assert [(r[2] == victim, r[1], r[3]) for r in rows] == [
            (True, 1, "start"),
            (False, 2, "start"),
            (False, 2, "done"),
        ]


# -- S1: SIGTERM --------------------------------------------------------------


async def test_sigterm_finishes_running_and_hands_back_prefetched_at_once(
    redis_url: str, rig_factory: Callable[..., Rig]
) -> None:
    # A 30 s lease: only an explicit hand-back explains a quick pickup.
    rig = rig_factory(redis_url, visibility_timeout=30.0)
    record = rig.actor("record")
    owner = redis.Redis.from_url(redis_url)
    owners = rig.broker._keys.queue(QUEUE)[6]
    async with rig.broker:
        # Given: A runs two long messages and holds the next two it fetched;
        # B, started later, runs the six others.
        leaving = rig.start("a", "--concurrency", "2", "--shutdown-timeout", "20")
        [a_pid] = leaving.wait_for_pids(1)
        sent = await record.send_many([(8000,)] * 2 + [(1500,)] * 8)

        def held_by_a() -> int:
            tokens: Any = owner.hvals(owners)
            return sum(f":{a_pid}:".encode() in t for t in tokens)

        await until(lambda: len(rig.rows("start")) == 2 and held_by_a() == 4, 15, "A: 2 + 2")
        staying = rig.start("b", "--concurrency", "8")
        await until(lambda: len(rig.rows("start")) == 8, 20, "B to start the other six")
        assert held_by_a() == 4
        # When: A gets SIGTERM (a deploy).
        leaving.signal(signal.SIGTERM)
        term_at = time.time()
        # Expect: B starts A's two held messages at once, A finishes its two and exits 0.
        await until(lambda: len(rig.rows("start")) == 10, 3, "B to take A's held messages")
        assert leaving.wait(15) == 0
        exited_at = time.time()
        await rig.broker.join(QUEUE, timeout=15)
        assert staying.process.poll() is None
    owner.close()
    rows = rig.rows()
    starts = [r for r in rows if r[3] == "start"]
    handed_back = [r for r in starts if r[4] > term_at]
    assert len(handed_back) == 2 and all(r[2] != a_pid for r in handed_back)
    assert max(r[4] for r in handed_back) - term_at <= 2.0
    a_done = [r for r in rows if r[2] == a_pid and r[3] == "done"]
    assert len(a_done) == 2 and all(r[4] < exited_at <= r[4] + 1.5 for r in a_done)
    assert all(r[4] < term_at for r in rows if r[2] == a_pid and r[3] == "start")
    # Nothing lost, nothing run twice.
    assert Counter(r[0] for r in starts) == Counter({m.id: 1 for m in sent})
    assert Counter(r[0] for r in rows if r[3] == "done") == Counter({m.id: 1 for m in sent})


# -- S4: Redis restarted while workers run -------------------------------------


async def test_workers_ride_out_redis_restarts_and_kills(
    server: RedisServer, rig_factory: Callable[..., Rig]
) -> None:
    rig = rig_factory(server.url, visibility_timeout=2.0, reaper_interval=0.5)
    rig.broker.send_timeout = 1.0  # the producer's, not the workers'
    record = rig.actor("record")
    sent: dict[str, float] = {}
    refused = 0
    delayed: dict[str, float] = {}
    restarts: list[float] = []

    async def produce(stop: anyio.Event) -> None:
        nonlocal refused
        while not stop.is_set():
            try:
                m = await record.send(30)
            except BrokerUnavailable:
                refused += 1
            else:
                sent[m.id] = time.time()
            await anyio.sleep(0.02)

    async with rig.broker:
        cli = rig.start("w", "--processes", "2", "--concurrency", "8")
        pids = cli.wait_for_pids(2)
        for delay in (1.0, 2.0, 3.5, 4.5, 6.0, 7.0):
            m = await record.send_with_options(args=(0,), delay=delay)
            assert m.eta is not None
            delayed[m.id] = m.eta.timestamp()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, stop)
            for fault in (server.shutdown, server.kill):
                await until(lambda: len(rig.rows("done")) >= len(sent) // 2 > 5, 10, "work")
                fault()
                assert not server.ping()
                await anyio.sleep(1.5)  # the outage
                server.start()
                restarted_at = time.time()
                restarts.append(restarted_at)
                await until(
                    lambda t=restarted_at: sum(r[4] > t for r in rig.rows("done")) >= 10,  # type: ignore[misc]
                    10,
                    "work to resume",
                )
            stop.set()
        await rig.broker.join(QUEUE, timeout=20)
        assert await rig.broker.stats(QUEUE) == (0, 0, 0, 0)
    log = "".join(cli.output() for cli in rig.workers)
    # The outages happened and the same two processes rode them out.
    assert log.count("lost the connection") >= 2 and "reconnected" in log
    assert cli.pids() == pids and cli.process.poll() is None
    assert refused > 0
    rows = rig.rows()
    done = Counter(r[0] for r in rows if r[3] == "done")
    # No loss: every send that returned ran; delayed ones once, never early.
    assert set(sent) | set(delayed) <= set(done)
    for mid, eta in delayed.items():
        assert done[mid] == 1
        [start] = [r for r in rows if r[0] == mid and r[3] == "start"]
        # Due at eta, or when Redis came back if it was down then.
        due = max([eta] + [t for t in restarts if t <= start[4]])
        assert eta - 0.05 <= start[4] <= due + 2.0 + 0.5 + 2.0, (start[4] - due, restarts)
    # Duplicates only for messages in flight at a fault, and flagged as redeliveries.
    duplicates = sum(n - 1 for n in done.values())
    assert duplicates <= 2 * 16, duplicates
    for runs in by_id([r for r in rows if r[3] == "start"]).values():
        counts = [r[1] for r in runs]
        # A delivery lost with its reply at a kill still counts: the first run may be #2.
        assert counts == sorted(set(counts)), counts
    # Resumed quickly after each restart.
    for t in restarts:
        first = min(r[4] for r in rows if r[3] == "done" and r[4] > t)
        assert first - t <= 3.0, first - t


# -- S6 / S9: long tasks under a short lease ------------------------------------


async def test_long_tasks_under_a_short_lease_run_once(
    redis_url: str, rig_factory: Callable[..., Rig]
) -> None:
    rig = rig_factory(redis_url, visibility_timeout=1.0, reaper_interval=0.25)
    admin = redis.Redis.from_url(redis_url)
    inflight = rig.broker._keys.queue(QUEUE)[2]
    async with rig.broker:
        cli = rig.start("w", "--processes", "2", "--concurrency", "4")
        cli.wait_for_pids(2)
        # Given: a sync actor and a loop-blocking async actor, each 3.5 leases long,
        # and two eager workers that would gladly take them over.
        sync = await rig.actor("record_sync").send(3500)
        blocking = await rig.actor("block_loop").send(3500)
        deadlines: dict[bytes, set[float]] = {}
        with anyio.fail_after(15):
            while len(rig.rows("done")) < 2:
                held: Any = admin.zrange(inflight, 0, -1, withscores=True)
                for member, score in held:
                    deadlines.setdefault(member, set()).add(score)
                await anyio.sleep(0.05)
        await rig.broker.join(QUEUE, timeout=10)
    admin.close()
    # The leases were renewed (at least three times each) while the actors ran...
    assert {m.decode() for m in deadlines} == {sync.id, blocking.id}
    assert all(len(scores) >= 4 for scores in deadlines.values()), deadlines
    # ... even while one of them blocked its event loop, which the worker noticed.
    assert "event_loop_blocked" in "".join(c.output() for c in rig.workers)
    # Expect: each ran exactly once, on its first delivery.
    rows = rig.rows()
    assert sorted((r[0], r[1], r[3]) for r in rows) == sorted(
        [(sync.id, 1, "start"), (sync.id, 1, "done")]
        + [(blocking.id, 1, "start"), (blocking.id, 1, "done")]
    )


# -- S8: a message that kills its worker ---------------------------------------


async def test_worker_killing_message_is_dead_lettered_after_max_deliveries(
    redis_url: str, rig_factory: Callable[..., Rig]
) -> None:
    rig = rig_factory(redis_url, visibility_timeout=1.0, reaper_interval=0.25, max_deliveries=3)
    async with rig.broker:
        # Given: one poison message (first in line) among twenty good ones.
        poison = await rig.actor("crash").send_with_options(priority=10)
        good = await rig.actor("record").send_many([(0,)] * 20)
        cli = rig.start("w", "--concurrency", "1")
        # Expect: it kills its worker three times, then is dead-lettered; the good run.
        await rig.broker.join(QUEUE, timeout=40)
        [dead] = await rig.broker.dead_letters(QUEUE)
        assert cli.process.poll() is None
    assert dead.id == poison.id and dead.reason.startswith("delivery_limit_exceeded")
    rows = rig.rows()
    assert [r[1] for r in rows if r[0] == poison.id] == [1, 2, 3]
    assert len(cli.pids()) == 4  # the first child and three restarts, no more
    done = Counter(r[0] for r in rows if r[3] == "done")
    assert done == Counter({m.id: 1 for m in good})


# -- S12: bytes written straight into the queue keys ----------------------------


CANARY = "CANARY-51c2e"


async def test_bytes_pushed_with_redis_cli_go_to_dead_letters(
    redis_url: str, rig_factory: Callable[..., Rig]
) -> None:
    rig = rig_factory(redis_url)
    async with rig.broker:
        cli = rig.start("w", "--concurrency", "4")
        cli.wait_for_pids(1)
        good = await rig.actor("record").send_many([(0,)] * 10)
        body, ready = rig.broker._keys.queue(QUEUE)[3], rig.broker._keys.queue(QUEUE)[0]
        bad = {
            "random": os.urandom(200) + CANARY.encode(),
            "notjson": f"hello {CANARY}".encode(),
            "array": f'["{CANARY}"]'.encode(),
            "typed": f'{{"queue": 1, "actor": "{CANARY}"}}'.encode(),
        }
        for n, (name, payload) in enumerate(bad.items()):
            run = ["redis-cli", "-u", redis_url]
            await anyio.run_process([*run, "-x", "HSET", body, name], input=payload)
            await anyio.run_process([*run, "ZADD", ready, "0", f"{n:016d}{name}"])
        await rig.broker.join(QUEUE, timeout=15)
        dead = {d.id: d for d in await rig.broker.dead_letters(QUEUE)}
        assert len(cli.pids()) == 1 and cli.process.poll() is None  # no restart
    assert set(dead) == set(bad)
    assert all(
        dead[n].body == p and dead[n].reason.startswith("decode_error") for n, p in bad.items()
    )
    assert Counter(r[0] for r in rig.rows("done")) == Counter({m.id: 1 for m in good})
    assert CANARY not in cli.output()


# -- S16: a 100k backlog --------------------------------------------------------


def rss_kib(pid: int) -> int:
    return int(proc_status(pid).get("VmRSS", "0 kB").split()[0])


async def test_a_100k_backlog_drains_with_bounded_worker_memory(
    redis_url: str, rig_factory: Callable[..., Rig]
) -> None:
    total = 100_000
    rig = rig_factory(redis_url, visibility_timeout=30.0)
    tally = rig.actor("tally")
    async with rig.broker:
        cli = rig.start("w", "--concurrency", "32")
        [pid] = cli.wait_for_pids(1)  # the worker child, which leaves the marker
        baseline = rss_kib(pid)
        began = time.monotonic()
        for _ in range(0, total, 10_000):
            await tally.send_many([()] * 10_000)
        enqueued_in = time.monotonic() - began
        peak = baseline
        with anyio.fail_after(90):
            while True:
                peak = max(peak, rss_kib(pid))
                s = await rig.broker.stats(QUEUE)
                if s.ready == 0 and s.in_flight == 0:
                    break
                await anyio.sleep(0.2)
        drained_in = time.monotonic() - began
        assert await rig.broker.stats(QUEUE) == (0, 0, 0, 0)
    ids = tally_ids(rig.ledger)
    assert len(ids) == total and len(set(ids)) == total
    # Prefetch bounds what a worker holds: memory does not grow with the backlog.
    assert peak - baseline < 25 * 1024, (baseline, peak)
    print(f"100k: enqueued in {enqueued_in:.1f} s, drained in {drained_in:.1f} s")


# -- S25: a worker-killing message among innocents ------------------------------


async def test_a_killer_among_innocents_is_isolated_and_only_it_is_dead_lettered(
    redis_url: str, rig_factory: Callable[..., Rig]
) -> None:
    rig = rig_factory(redis_url, visibility_timeout=1.0, reaper_interval=0.25, max_deliveries=3)
    async with rig.broker:
        # Given: a message that kills its worker, first in line, fetched in the
        # same batches as twenty good ones that take a while each.
        poison = await rig.actor("crash").send_with_options(priority=10)
        good = await rig.actor("record").send_many([(300,)] * 20)
        cli = rig.start("w", "--concurrency", "4")
        # Expect: the killer is cornered and dead-lettered; every good one completes.
        await rig.broker.join(QUEUE, timeout=60)
        [dead] = await rig.broker.dead_letters(QUEUE)
        assert cli.process.poll() is None
    assert dead.id == poison.id and dead.reason.startswith("delivery_limit_exceeded")
    rows = rig.rows()
    # It ran max_deliveries times, each run a crash; no more.
    assert [r[1] for r in rows if r[0] == poison.id] == [1, 2, 3]
    assert len(cli.pids()) == 4
    starts = by_id([r for r in rows if r[3] == "start" and r[0] != poison.id])
    done = Counter(r[0] for r in rows if r[3] == "done")
    assert done == Counter({m.id: 1 for m in good})
    # An innocent is charged only when it was running (started) beside the
    # killer at a crash: at most one per other running slot per crash (the
    # prefetched ones come back uncharged), and never past its last chance.
    charged = sum(runs[-1][1] - 1 for runs in starts.values())
    assert 1 <= charged <= 3 * (4 - 1), charged
    assert all(runs[-1][1] <= 3 for runs in starts.values())
