"""Chaos on the SQLite broker: a real worker tree under random SIGKILLs, then SIGTERM.

A ``taskflow worker --processes 2`` tree runs 3,000 messages (plain ones,
delayed ones, and ones that ask to be retried once) sent while the test
SIGKILLs one of its children every few seconds, then gets SIGTERM while a
last burst is in flight. Every message whose ``send`` returned must run to
its end at least once, no delayed message before its time; re-runs are
counted and bounded by what the killed children held when they died (read
from the broker's own lease columns just before each kill); nothing is left
in flight or dead. ``Ledger``, ``Store`` and the helpers are the fault
tests' (``test_sqlite_faults``).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.apps import sqlite_app as app
from tests.apps.chaos import load_target, run_chaos
from tests.brokers.test_sqlite_faults import Ledger, Run, Store, WorkerProcess, alive, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROUNDS = 30  # of 100 messages each: 80 plain, 10 retried once, 10 delayed
KILLS = 8
FINAL_BURST = 200


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "broker.sqlite3")


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite3")


@pytest.fixture
def start_worker(
    store: Store, ledger: Ledger, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []
    env = {
        app.PATH_ENV: str(store.path),
        app.LEDGER_ENV: str(ledger.path),
        # Kills charge deliveries; the limit is for poison, which this test has none of.
        app.MAX_DELIVERIES_ENV: "50",
    }

    def start(name: str, *args: str) -> WorkerProcess:
        worker = WorkerProcess(name, env, tmp_path / f"{name}.log", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill_group()


class Chaos:
    """What was sent (with its kind and time) and what each kill caught."""

    def __init__(self, store: Store, ledger: Ledger, supervisor: WorkerProcess) -> None:
        self.store = store
        self.ledger = ledger
        self.supervisor = supervisor
        self.sent: dict[str, tuple[str, float, float]] = {}  # id -> (kind, sent at, delay)
        self.kills: list[tuple[int, int]] = []  # (pid, messages it held)
        self.rng = random.Random(20261201)

    async def produce(self, broker: Any, rounds: int) -> None:
        chaos = broker.actors["chaos"]
        n = 0
        for _ in range(rounds):
            now = time.time()
            plain = await chaos.send_many([(n + i, False) for i in range(80)])
            self.sent.update((m.id, ("plain", now, 0.0)) for m in plain)
            n += 80
            for _ in range(10):
                m = await chaos.send(n, True)
                self.sent[m.id] = ("retried", time.time(), 0.0)
                n += 1
            for _ in range(10):
                delay = self.rng.uniform(0.5, 6.0)
                now = time.time()
                m = await chaos.send_with_options(args=(n, False), delay=delay)
                self.sent[m.id] = ("delayed", now, delay)
                n += 1
            await anyio.sleep(0.6)

    def children(self) -> list[int]:
        return [p for p in self.ledger.pids(self.supervisor.name) if alive(p)]

    async def kill_one(self) -> None:
        victim = self.rng.choice(self.children())
        # Frozen first, so that it cannot lease more between the count and the kill
        os.kill(victim, signal.SIGSTOP)
        [(held,)] = self.store.query(
            "SELECT COUNT(*) FROM taskflow_messages WHERE lease_owner LIKE ?", (f"%:{victim}:%",)
        )
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: not alive(victim), 5, f"child {victim} to die")
        self.kills.append((victim, int(held)))

    async def kill_randomly(self, count: int) -> None:
        for _ in range(count):
            await anyio.sleep(self.rng.uniform(1.5, 3.0))
            await wait_for(lambda: len(self.children()) == 2, 20, "both children up")
            await self.kill_one()


async def test_worker_tree_under_random_sigkills_and_a_final_sigterm_loses_nothing(
    start_worker: Callable[..., WorkerProcess], store: Store, ledger: Ledger
) -> None:
    # Given a worker tree of two processes (2 s leases, reaper every 0.5 s)
    a = start_worker("A", "--processes", "2", "--concurrency", "20", "--shutdown-timeout", "10")
    await wait_for(lambda: len(ledger.pids("A")) == 2, 30, "A's two children")
    chaos = Chaos(store, ledger, a)
    producer = app.build(str(store.path))
    async with producer:
        # When 3,000 messages are sent while a random child is SIGKILLed every few seconds
        async with anyio.create_task_group() as tg:
            tg.start_soon(chaos.kill_randomly, KILLS)
            await chaos.produce(producer, ROUNDS)
        # And the supervisor gets SIGTERM while a last burst is being worked on
        await wait_for(lambda: finished(ledger) >= len(chaos.sent), 60, "the first 3,000")
        # (a child still in its restart backoff at the stop would make the exit unclean)
        await wait_for(lambda: len(chaos.children()) == 2, 30, "both children up")
        burst = await producer.actors["steady"].send_many(
            [(100_000 + i, 0.5) for i in range(FINAL_BURST)]
        )
        chaos.sent.update((m.id, ("plain", time.time(), 0.0)) for m in burst)
        await wait_for(lambda: bool(started_ids(ledger) & {m.id for m in burst}), 10, "the burst")
    in_flight = store.states()[1]
    a.process.send_signal(signal.SIGTERM)
    assert a.process.wait(20) == 0
    assert "received SIGTERM" in a.output()
    # Then the running ones finished, and what the stopped tree had not run is handed back
    waiting, left_in_flight, dead = store.states()
    assert in_flight > 0 and waiting > 0 and left_in_flight == dead == 0
    # And a new worker runs what is left
    start_worker("B", "--concurrency", "20")
    await wait_for(lambda: finished(ledger) >= len(chaos.sent), 30, "everything to finish")
    await wait_for(lambda: store.states() == (0, 0, 0), 10, "the acks")
    check_ledger(chaos, ledger)


def started_ids(ledger: Ledger) -> set[str | None]:
    return {r.message_id for r in ledger.runs("start")}


def finished(ledger: Ledger) -> int:
    return len({r.message_id for r in ledger.runs("end")})


def check_ledger(chaos: Chaos, ledger: Ledger) -> None:
    # The faults happened: every kill hit a live child that the supervisor replaced,
    # and the killed children held messages
    assert len(chaos.kills) == KILLS
    assert len(ledger.pids("A")) == 2 + KILLS
    held = sum(h for _, h in chaos.kills)
    assert held > 0
    # Every message whose send returned ran to its end at least once
    ends = Counter(r.message_id for r in ledger.runs("end"))
    assert set(ends) == set(chaos.sent)
    # Re-runs are bounded by what the killed children held (a graceful stop adds none)
    starts: dict[str, list[Run]] = {}
    for r in ledger.runs("start"):
        assert r.message_id is not None
        starts.setdefault(r.message_id, []).append(r)
    expected = {i: 2 if kind == "retried" else 1 for i, (kind, _, _) in chaos.sent.items()}
    reruns = sum(len(runs) - expected[i] for i, runs in starts.items())
    duplicates = sum(c - 1 for c in ends.values())
    assert 0 <= duplicates <= reruns <= held, (duplicates, reruns, held)
    # Every re-run after a fault is counted as a redelivery (the deliberate retry starts over)
    for i, runs in starts.items():
        if expected[i] == 1:
            assert all((r.delivery or 0) >= 2 for r in runs[1:]), runs
    # No delayed message ran before its time
    for i, (kind, sent_at, delay) in chaos.sent.items():
        if kind == "delayed":
            assert starts[i][0].at >= sent_at + delay - 0.05, (i, delay)
    print(
        f"\nsent {len(chaos.sent)}, kills {len(chaos.kills)} holding {held} messages, "
        f"re-runs {reruns}, duplicate completions {duplicates}"
    )


@pytest.mark.timeout(120)
async def test_the_shared_chaos_run_on_sqlite(tmp_path: Path) -> None:
    # The target that benchmarks/chaos.py --broker sqlite runs, shortly
    target = load_target("sqlite", tmp_path / "target")
    try:
        ledger = await run_chaos(target, tmp_path / "run", seconds=12, rate=100, fault_every=3)
    finally:
        target.close()
    print("\n".join(ledger.lines()))
    assert ledger.child_kills >= 1 and sum(ledger.server_faults.values()) >= 1, ledger.lines()
    assert ledger.sent >= 600 and ledger.delayed > 0 and ledger.retried > 0
    assert not ledger.problems(), ledger.lines()
