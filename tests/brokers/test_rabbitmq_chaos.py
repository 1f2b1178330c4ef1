"""Chaos on the RabbitMQ broker: a real worker tree under SIGKILLs and dropped connections.

A ``taskflow worker --processes 2`` tree runs 3,000 messages (plain ones,
delayed ones, and ones that fail their first attempt and are retried) sent
while the test SIGKILLs one of its children every few seconds and twice
closes every connection on the node (``rabbitmqctl close_all_connections``,
under the exclusive host-wide lock), then gets SIGTERM while a last burst is
in flight. Every message whose ``send`` returned runs to its end at least
once, no delayed message before its time; re-runs are counted and bounded
by what RabbitMQ held unacked for the faulted processes at each fault
(read with the processes frozen, just before the fault); nothing is left
ready, delayed, unacked or dead.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from taskflow import BrokerUnavailable
from tests.apps import rabbitmq_app as app
from tests.apps.rabbitmq_app import Row, rabbitmqctl, server_lock, unacked_by
from tests.brokers.test_rabbitmq_faults import QUEUE, Scenario, WorkerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROUNDS = 30  # of 100 messages each: 80 plain, 10 retried once, 10 delayed
KILLS = 6
DROPS = 2
FINAL_BURST = 200
BATCH = 80  # the largest send
PROCESSES, CONCURRENCY = 2, 20


@pytest.fixture
async def scenario(tmp_path: Path, amqp_url: str) -> AsyncIterator[Scenario]:
    # close_all_connections hits every connection on the node: no other
    # RabbitMQ test of any run meanwhile.
    with server_lock(exclusive=True):
        s = Scenario(tmp_path, amqp_url)
        try:
            async with s.producer:
                yield s
        finally:
            await anyio.to_thread.run_sync(s.cleanup)


def children(worker: WorkerProcess) -> list[int]:
    """Pids of the supervisor's children still alive."""
    pids = [int(p) for p in re.findall(r"started child \d+ \(pid (\d+)\)", worker.log())]
    return [p for p in pids if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


class Chaos:
    """What was sent (kind, time, delay), and what RabbitMQ held at each fault."""

    def __init__(self, scenario: Scenario, worker: WorkerProcess) -> None:
        self.scenario = scenario
        self.worker = worker
        self.sent: dict[str, tuple[str, float, float]] = {}
        self.unsure: set[str] = set()  # sends that raised: stored or not
        self.faults: list[tuple[str, int]] = []  # (fault, unacked it caught)
        self.rng = random.Random(20261201)

    async def send(self, messages: list[Any], kind: str, delay: float = 0.0) -> None:
        now = time.time()
        try:
            await self.scenario.send(messages)
        except BrokerUnavailable:
            self.unsure.update(m.id for m in messages)
        else:
            self.sent.update((m.id, (kind, now, delay)) for m in messages)

    async def produce(self, rounds: int) -> None:
        n = 0
        for _ in range(rounds):
            plain = [app.chaos.message(n + i, False, self.rng.randrange(0, 60)) for i in range(80)]
            n += 80
            await self.send(plain, "plain")
            await self.send([app.chaos.message(n + i, True, 10) for i in range(10)], "retried")
            n += 10
            for _ in range(10):
                delay = self.rng.uniform(0.5, 6.0)
                m = app.chaos.message_with_options(args=(n, False, 10), delay=delay)
                await self.send([m], "delayed", delay)
                n += 1
            await anyio.sleep(0.5)

    async def both_children(self) -> list[int]:
        with anyio.fail_after(30):
            while True:  # two children, each consuming
                log = self.worker.log()
                pids = children(self.worker)
                if len(pids) == 2 and log.count(f"consuming {QUEUE}") >= log.count("started child"):
                    return pids
                await anyio.sleep(0.05)

    async def kill_one(self) -> None:
        victim = self.rng.choice(await self.both_children())
        os.kill(victim, signal.SIGSTOP)  # frozen: it takes nothing more before the count
        held = await anyio.to_thread.run_sync(unacked_by, f"worker pid {victim}")
        os.kill(victim, signal.SIGKILL)
        with anyio.fail_after(5):
            while _alive(victim):
                await anyio.sleep(0.02)
        self.faults.append((f"SIGKILL {victim}", held))

    async def drop_connections(self) -> None:
        pids = await self.both_children()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            held = await anyio.to_thread.run_sync(unacked_by, f"{self.scenario.prefix} worker")
            await anyio.to_thread.run_sync(
                lambda: rabbitmqctl("close_all_connections", "taskflow chaos test")
            )
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        self.faults.append(("close_all_connections", held))

    async def run_faults(self) -> None:
        plan = ["kill"] * KILLS + ["drop"] * DROPS
        self.rng.shuffle(plan)
        for fault in plan:
            await anyio.sleep(self.rng.uniform(1.0, 2.5))
            await (self.kill_one() if fault == "kill" else self.drop_connections())


def done_ids(scenario: Scenario) -> set[str]:
    return {r.id for r in scenario.rows() if r.event == "done"}


async def test_worker_tree_under_kills_and_dropped_connections_loses_nothing(
    scenario: Scenario,
) -> None:
    # Given a worker tree of two processes
    worker = scenario.worker("--processes", "2", "--concurrency", "20", "--shutdown-timeout", "10")
    await worker.ready(2, timeout=30)
    chaos = Chaos(scenario, worker)
    # When 3,000 messages are sent while children are SIGKILLed and every
    # connection is dropped, at random
    async with anyio.create_task_group() as tg:
        tg.start_soon(chaos.run_faults)
        await chaos.produce(ROUNDS)
    await scenario.until(lambda: set(chaos.sent) <= done_ids(scenario), 60, "the first 3,000")
    # And the supervisor gets SIGTERM while a last burst is being worked on
    await chaos.both_children()
    burst = [app.chaos.message(100_000 + i, False, 500) for i in range(FINAL_BURST)]
    await chaos.send(burst, "plain")
    burst_ids = {m.id for m in burst}
    await scenario.until(
        lambda: any(r.id in burst_ids for r in scenario.rows()), 10, "the burst to start"
    )
    worker.terminate()
    assert await worker.wait(20) == 0
    # Then what the stopped tree had not run is handed back, and a new worker runs it
    scenario.worker("--concurrency", "50")
    await scenario.until(lambda: set(chaos.sent) <= done_ids(scenario), 30, "everything")
    await scenario.producer.join(QUEUE, timeout=40)
    check(chaos, scenario.rows())
    assert await scenario.producer.stats(QUEUE) == (0, 0, 0, 0)
    main = scenario.producer._declarer.topology.names(QUEUE).main
    with anyio.fail_after(10):  # nothing left unacked on the server either
        while f"{main}\t0\t0" not in await anyio.to_thread.run_sync(
            lambda: rabbitmqctl("list_queues", "-q", "name", "messages", "messages_unacknowledged")
        ):
            await anyio.sleep(0.1)


def check(chaos: Chaos, rows: list[Row]) -> None:
    # The faults happened and caught messages in flight
    assert [f for f, _ in chaos.faults].count("close_all_connections") == DROPS
    assert len(chaos.faults) == KILLS + DROPS
    held = sum(h for _, h in chaos.faults)
    assert held > 0
    # Every message whose send returned ran to its end at least once
    ends = Counter(r.id for r in rows if r.event == "done")
    assert set(chaos.sent) <= set(ends) <= set(chaos.sent) | chaos.unsure
    # Re-runs are bounded by what RabbitMQ held for the faulted processes, plus
    # what was being published at each drop: a publish whose confirm was lost
    # with its connection is sent again (at-least-once), at most a producer
    # batch and every worker's moves (retries, hand-backs) then in flight
    starts: dict[str, list[Row]] = {}
    for r in rows:
        if r.event == "start":
            starts.setdefault(r.id, []).append(r)
    expected = {i: 2 if kind == "retried" else 1 for i, (kind, _, _) in chaos.sent.items()}
    reruns = sum(len(runs) - expected.get(i, 1) for i, runs in starts.items())
    duplicates = sum(c - 1 for c in ends.values())
    republished = DROPS * (BATCH + PROCESSES * CONCURRENCY)
    assert 0 <= duplicates <= reruns <= held + republished, (
        duplicates,
        reruns,
        held,
        chaos.faults,
    )
    # A run after a fault is counted as a redelivery (a deliberate retry starts over)
    for i, runs in starts.items():
        if expected.get(i, 1) == 1:
            assert all(r.deliveries >= 2 for r in runs[1:]), runs
    # No delayed message ran before its time
    for i, (kind, sent_at, delay) in chaos.sent.items():
        if kind == "delayed":
            assert starts[i][0].at >= sent_at + delay - 0.05, (i, delay)
    print(
        f"\nsent {len(chaos.sent)} ({len(chaos.unsure)} unsure), faults {chaos.faults}, "
        f"held {held}, re-runs {reruns}, duplicate completions {duplicates}"
    )
