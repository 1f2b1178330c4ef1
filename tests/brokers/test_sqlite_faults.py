"""Faults with real worker processes on the SQLite broker (RELIABILITY.md S1, S3, S8, S9, S11-S13).

Workers run as ``python -m taskflow worker tests.apps.sqlite_app:broker``;
their actors record every start and end in a ledger, a SQLite file apart from
the broker's, and each test counts every message in and out of it after
proving that its fault happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pytest

from taskflow import Message
from tests.apps import sqlite_app as app

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
QUEUE = app.QUEUE
# Orphans must be back within the lease, one reaper interval and a second of slack.
RECOVERY_BOUND = app.VISIBILITY_TIMEOUT + app.REAPER_INTERVAL + 1.0


class Run(NamedTuple):
    message_id: str | None
    n: int | None
    delivery: int | None
    worker: str
    pid: int
    event: str
    at: float


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        app.create_ledger(str(path))

    def runs(self, event: str | None = None, worker: str | None = None) -> list[Run]:
        with closing(sqlite3.connect(self.path, timeout=10)) as conn:
            rows = [Run(*row) for row in conn.execute("SELECT * FROM runs ORDER BY at")]
        return [
            r
            for r in rows
            if (event is None or r.event == event) and (worker is None or r.worker == worker)
        ]

    def pids(self, worker: str) -> set[int]:
        return {r.pid for r in self.runs("worker-start", worker)}


class Store:
    """Read-only view of the broker's file, independent of any broker instance."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as conn:
            return conn.execute(sql, params).fetchall()

    def states(self) -> tuple[int, int, int]:
        """(waiting, in flight, dead) message counts."""
        [row] = self.query(
            "SELECT COALESCE(SUM(lease_owner IS NULL AND dead_at IS NULL), 0),"
            " COALESCE(SUM(lease_owner IS NOT NULL), 0), COALESCE(SUM(dead_at IS NOT NULL), 0)"
            " FROM taskflow_messages"
        )
        return row[0], row[1], row[2]

    def dead(self) -> dict[str, tuple[bytes, str]]:
        rows = self.query(
            "SELECT id, body, reason FROM taskflow_messages WHERE dead_at IS NOT NULL"
        )
        return {i: (body, reason) for i, body, reason in rows}


class WorkerProcess:
    """A ``taskflow worker`` supervisor and its child, in their own process group."""

    def __init__(self, name: str, env: dict[str, str], log: Path, *args: str) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskflow",
                    "worker",
                    "tests.apps.sqlite_app:broker",
                    "--queues",
                    QUEUE,
                    *args,
                ],
                cwd=REPO,
                env={**os.environ, **env, app.WORKER_ENV: name},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(10)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "zombie" not in state


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 20 ms; return when it holds, the seconds it took."""
    start = time.monotonic()
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)
        return time.monotonic() - start
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "broker.sqlite3")


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite3")


@pytest.fixture
def env(store: Store, ledger: Ledger) -> dict[str, str]:
    return {app.PATH_ENV: str(store.path), app.LEDGER_ENV: str(ledger.path)}


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str, *args: str, **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess(name, {**env, **extra_env}, tmp_path / f"{name}.log", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill_group()


@pytest.fixture
async def producer(store: Store, env: dict[str, str]) -> AsyncIterator[Any]:
    """The app's broker in this process, connected only while sending."""
    yield app.build(str(store.path))


async def send(producer: Any, actor: str, calls: list[tuple[Any, ...]]) -> list[Message[Any]]:
    async with producer:
        sent: list[Message[Any]] = await producer.actors[actor].send_many(calls)
    return sent


async def test_sigkill_mid_task_loses_nothing_and_orphans_return_on_an_idle_queue(
    start_worker: Callable[..., WorkerProcess], producer: Any, ledger: Ledger, store: Store
) -> None:
    # Given worker A holding 8 messages: 4 running (30 s each) and 4 prefetched
    sent = await send(producer, "sleepy", [(i, 30.0) for i in range(8)])
    a = start_worker("A", "--concurrency", "4")
    await wait_for(lambda: len(ledger.runs("start", "A")) == 4, 20, "A to start 4 messages")
    await wait_for(lambda: store.states() == (0, 8, 0), 5, "A to hold all 8")
    # And an idle worker B: nothing else is on the queue
    start_worker("B", "--concurrency", "4")
    await wait_for(lambda: bool(ledger.pids("B")), 20, "B to start")
    [a_child] = ledger.pids("A")
    # When A's supervisor and child are SIGKILLed
    killed_at = time.time()
    os.killpg(a.pid, signal.SIGKILL)
    assert a.process.wait(10) == -signal.SIGKILL
    await wait_for(lambda: not alive(a_child), 5, "A's child to die")
    # Then B runs all 8 within the lease plus one reaper interval, each once
    await wait_for(lambda: len(ledger.runs("end", "B")) == 8, 20, "B to finish all 8")
    await wait_for(lambda: store.states() == (0, 0, 0), 5, "the acks")
    ids = {m.id for m in sent}
    a_starts, b_starts = ledger.runs("start", "A"), ledger.runs("start", "B")
    assert not ledger.runs("end", "A")
    assert {r.delivery for r in a_starts} == {1} and {r.message_id for r in a_starts} < ids
    assert Counter(r.message_id for r in b_starts) == Counter(ids)
    assert {r.delivery for r in b_starts} == {2}
    assert {r.message_id for r in ledger.runs("end", "B")} == ids
    latest = max(r.at for r in b_starts) - killed_at
    assert latest <= RECOVERY_BOUND, latest


async def test_sigterm_finishes_running_work_and_returns_the_rest_at_once(
    start_worker: Callable[..., WorkerProcess], producer: Any, ledger: Ledger, store: Store
) -> None:
    lease = 10.0
    # Given worker A (10 s lease) running 2 messages of 1.5 s with 2 more prefetched, 2 waiting
    sent = await send(producer, "sleepy", [(i, 1.5) for i in range(6)])
    a = start_worker("A", "--concurrency", "2", **{app.LEASE_ENV: str(lease)})
    await wait_for(lambda: len(ledger.runs("start", "A")) == 2, 20, "A to start 2 messages")
    await wait_for(lambda: store.states() == (2, 4, 0), 5, "A to prefetch 2 more")
    # When A is sent SIGTERM
    terminated_at = time.monotonic()
    a.process.send_signal(signal.SIGTERM)
    # Then it finishes the 2 running messages and exits cleanly, well within the lease
    assert a.process.wait(10) == 0
    took = time.monotonic() - terminated_at
    assert "received SIGTERM" in a.output()
    assert took < 1.5 + 3.0, took
    running = {r.message_id for r in ledger.runs("start", "A")}
    assert {r.message_id for r in ledger.runs("end", "A")} == running and len(running) == 2
    # And the prefetched ones are back at once, not after the 10 s lease
    assert store.states() == (4, 0, 0)
    assert len(ledger.runs("start", "A")) == 2
    # And another worker runs the rest, each message exactly once in all
    start_worker("B", "--concurrency", "2", **{app.LEASE_ENV: str(lease)})
    await wait_for(lambda: len(ledger.runs("end")) == 6, 20, "all 6 to finish")
    await wait_for(lambda: store.states() == (0, 0, 0), 5, "the acks")
    ends = Counter(r.message_id for r in ledger.runs("end"))
    assert ends == Counter(m.id for m in sent)
    assert {r.delivery for r in ledger.runs("start", "B")} <= {1, 2}


async def test_message_that_kills_its_worker_is_dead_lettered_after_max_deliveries(
    start_worker: Callable[..., WorkerProcess], producer: Any, ledger: Ledger, store: Store
) -> None:
    # Given one message that calls os._exit among 20 good ones
    async with producer:
        good = await producer.actors["sleepy"].send_many([(i, 0.0) for i in range(10)])
        poison = await producer.actors["crash"].send(99)
        good += await producer.actors["sleepy"].send_many([(i, 0.0) for i in range(10, 20)])
    # When one supervised worker runs them (its supervisor restarts the child)
    start_worker("A", "--concurrency", "2")

    def drained() -> bool:
        waiting, in_flight, dead = store.states()
        return waiting == in_flight == 0 and dead >= 1

    await wait_for(drained, 60, "the queue to drain")
    # Then the poison ran exactly max_deliveries times, each time killing a different child
    crashes = ledger.runs("start")
    crashes = [r for r in crashes if r.message_id == poison.id]
    assert [r.delivery for r in crashes] == [1, 2, 3]
    assert len({r.pid for r in crashes}) == 3
    assert not any(alive(r.pid) for r in crashes)
    assert len(ledger.pids("A")) == 4  # the first child and three restarts
    # And it is the only dead letter, with its reason
    dead = store.dead()
    assert list(dead) == [poison.id]
    assert dead[poison.id][1].startswith("delivery_limit_exceeded")
    # And every good message ran to its end; re-runs only after a crash, never charged past
    # the limit
    ends = Counter(r.message_id for r in ledger.runs("end"))
    assert set(ends) == {m.id for m in good}
    reruns = [r for r in ledger.runs("start") if r.message_id != poison.id and r.delivery != 1]
    assert all((r.delivery or 0) <= app.MAX_DELIVERIES for r in reruns)
    assert sum(ends.values()) - 20 <= len(reruns)
    assert store.states() == (0, 0, 1)


async def test_long_sync_actor_under_a_blocked_loop_keeps_its_lease(
    start_worker: Callable[..., WorkerProcess], producer: Any, ledger: Ledger, store: Store
) -> None:
    # Given worker A running, with a 2 s lease, a sync actor for 5 s and an async actor that
    # blocks A's event loop for 5 s
    a = start_worker("A", "--concurrency", "2")
    await wait_for(lambda: bool(ledger.pids("A")), 20, "A to start")
    async with producer:
        slow = await producer.actors["sleepy_sync"].send(0, 5.0)
        await wait_for(lambda: len(ledger.runs("start", "A")) >= 1, 10, "A to start the sync one")
        hog = await producer.actors["hog"].send(1, 5.0)
        await wait_for(lambda: len(ledger.runs("start", "A")) >= 2, 10, "A to start the hog")
    [hog_start] = [r for r in ledger.runs("start") if r.message_id == hog.id]

    def hog_lease_renewed() -> bool:
        # Renewed past the 2 s it was leased for, while the hog still blocks the loop
        rows = store.query("SELECT lease_expires FROM taskflow_messages WHERE id = ?", (hog.id,))
        return bool(rows) and rows[0][0] > hog_start.at + app.VISIBILITY_TIMEOUT + 1.0

    # And an idle worker B whose reaper would hand both over if their leases lapsed
    start_worker("B", "--concurrency", "2")
    await wait_for(hog_lease_renewed, 5, "the hog's lease to be renewed")
    assert hog.id not in {r.message_id for r in ledger.runs("end")}
    await wait_for(lambda: bool(ledger.pids("B")), 20, "B to start")
    # When both finish
    await wait_for(lambda: len(ledger.runs("end", "A")) == 2, 15, "both to finish")
    await wait_for(lambda: store.states() == (0, 0, 0), 5, "both to be acked")
    # Then the loop really was blocked for 5 s, and nothing ran twice
    [hog_end] = [r for r in ledger.runs("end") if r.message_id == hog.id]
    assert hog_end.at - hog_start.at >= 5.0
    assert Counter(r.message_id for r in ledger.runs("start")) == {slow.id: 1, hog.id: 1}
    assert not ledger.runs("start", "B")
    assert "lease_lost" not in a.output()


async def test_bad_input_is_dead_lettered_with_a_reason_and_good_work_goes_on(
    start_worker: Callable[..., WorkerProcess], producer: Any, ledger: Ledger, store: Store
) -> None:
    # Given undecodable rows written straight into the table, a message for an unknown actor,
    # arguments that do not fit, and good messages among them
    async with producer:
        add = producer.actors["add"]
        good = await add.send_many([(i, 1) for i in range(5)])
        arity = await add.send_with_options(args=(1, 2, 3))
        types = await add.send_with_options(args=("one", 2))
        unknown: Message[Any] = Message(queue=QUEUE, actor="not_deployed_yet", args=(1,))
        await producer.enqueue([unknown])
        good += await add.send_many([(i, 1) for i in range(5, 10)])
    raw = {"raw-bytes": b"\xff\x00garbage", "raw-list": b"[1, 2, 3]"}
    for message_id, body in raw.items():
        store.query(
            "INSERT INTO taskflow_messages (queue, id, body, priority, ready_at)"
            " VALUES (?, ?, ?, 0, 0)",
            (QUEUE, message_id, body),
        )
    # When a worker process consumes them
    start_worker("A", "--concurrency", "4")
    await wait_for(lambda: store.states() == (0, 0, 5), 20, "the queue to drain")
    # Then every bad one is dead with its reason and raw bytes, and every good one ran once
    dead = store.dead()
    reasons = {i: reason.split(":", 1)[0] for i, (_, reason) in dead.items()}
    assert reasons == {
        "raw-bytes": "decode_error",
        "raw-list": "decode_error",
        unknown.id: "unknown_actor",
        arity.id: "invalid_arguments",
        types.id: "invalid_arguments",
    }
    assert {dead[i][0] for i in raw} == set(raw.values())
    assert Counter(r.message_id for r in ledger.runs("end")) == Counter(m.id for m in good)
    assert len(ledger.pids("A")) == 1  # the worker never crashed


async def test_many_processes_sending_and_consuming_lose_and_duplicate_nothing(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], ledger: Ledger, store: Store
) -> None:
    # Given two worker commands of two processes each, consuming while three producer
    # processes send 300 messages each (half one by one, half in batches)
    start_worker("A", "--processes", "2", "--concurrency", "20")
    start_worker("B", "--processes", "2", "--concurrency", "20")
    producers = [
        await anyio.open_process(
            [sys.executable, "-m", "tests.apps.sqlite_app", "produce", "300", f"p{i}"],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=None,
            stderr=None,
        )
        for i in range(3)
    ]
    try:
        with anyio.fail_after(60):
            assert [await p.wait() for p in producers] == [0, 0, 0]
    finally:
        for p in producers:
            if p.returncode is None:
                p.kill()
    # When everything drains
    sent = [r.message_id for r in ledger.runs("sent")]
    assert len(sent) == len(set(sent)) == 900
    await wait_for(lambda: len(ledger.runs("end")) >= 900, 60, "900 runs")
    await wait_for(lambda: store.states() == (0, 0, 0), 10, "the queue to drain")
    # Then every sent message ran exactly once, spread over several processes
    ends = ledger.runs("end")
    assert Counter(r.message_id for r in ends) == Counter(sent)
    assert len({r.pid for r in ends}) >= 2
    assert {r.worker for r in ends} == {"A", "B"}


def most_at_once(runs: list[Run], ends: list[Run]) -> int:
    """The largest number of ``runs`` in progress at one moment (each ends at its ``end``)."""
    end_of = {r.message_id: r.at for r in ends}
    events = sorted([(r.at, 1) for r in runs] + [(end_of[r.message_id], -1) for r in runs])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


async def kill_child_at_delivery(ledger: Ledger, delivery: int, count: int) -> None:
    """Wait until ``count`` runs of delivery number ``delivery`` started, then SIGKILL their child."""

    def started() -> list[Run]:
        return [r for r in ledger.runs("start") if r.delivery == delivery]

    await wait_for(lambda: len(started()) == count, 20, f"{count} runs of delivery {delivery}")
    [child] = {r.pid for r in started()}
    os.kill(child, signal.SIGKILL)
    await wait_for(lambda: not alive(child), 5, "the child to die")


async def test_innocent_suspects_run_side_by_side_not_one_at_a_time(
    start_worker: Callable[..., WorkerProcess], store: Store, ledger: Ledger
) -> None:
    # Given a supervised worker (concurrency 10, delivery limit 20) running 10 one-second messages
    a = start_worker("A", "--concurrency", "10", **{app.MAX_DELIVERIES_ENV: "20"})
    sent = await send(app.build(str(store.path)), "steady", [(i, 1.0) for i in range(10)])
    # When its child is SIGKILLed twice while all 10 run, so that all 10 become suspects
    await kill_child_at_delivery(ledger, 1, 10)
    await kill_child_at_delivery(ledger, 2, 10)
    # Then every message completes on its third delivery, and none is dead
    await wait_for(lambda: len(ledger.runs("end")) == 10, 30, "all 10 to finish")
    await wait_for(lambda: store.states() == (0, 0, 0), 5, "the acks")
    third = [r for r in ledger.runs("start") if r.delivery == 3]
    ends = ledger.runs("end")
    assert {r.message_id for r in third} == {r.message_id for r in ends} == {m.id for m in sent}
    # And they ran side by side, not one at a time (which took 10 s), but apart: in groups
    span = max(r.at for r in ends) - min(r.at for r in third)
    assert span < 4.0, span
    assert 2 <= most_at_once(third, ends) <= 5
    assert "running them apart from other work" in a.output()


async def test_a_killer_among_suspects_is_found_and_only_it_is_dead(
    start_worker: Callable[..., WorkerProcess], store: Store, ledger: Ledger
) -> None:
    # Given a message that kills its worker, sent before three one-second messages
    broker = app.build(str(store.path))
    async with broker:
        poison = await broker.actors["crash"].send(99)
        good = await broker.actors["steady"].send_many([(i, 1.0) for i in range(3)])
    # When a supervised worker (concurrency 4, delivery limit 4) runs them
    start_worker("A", "--concurrency", "4", **{app.MAX_DELIVERIES_ENV: "4"})

    def drained() -> bool:
        waiting, in_flight, dead = store.states()
        return waiting == in_flight == 0 and dead == 1

    await wait_for(drained, 60, "the queue to drain")
    # Then the killer ran its four deliveries and is the only dead letter
    starts = ledger.runs("start")
    assert [r.delivery for r in starts if r.message_id == poison.id] == [1, 2, 3, 4]
    dead = store.dead()
    assert list(dead) == [poison.id]
    assert dead[poison.id][1].startswith("delivery_limit_exceeded")
    # And every innocent completed within its limit
    ends = Counter(r.message_id for r in ledger.runs("end"))
    assert set(ends) == {m.id for m in good}
    assert max(r.delivery or 0 for r in starts) <= 4


# -- a late heartbeat and wall-clock steps (issue: leases judged by a clock a step cannot move) --


def process_state(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines() if line.startswith("State:")).split()[1]


def latest_lease_expiry(store: Store) -> float:
    [(expiry,)] = store.query("SELECT MAX(lease_expires) FROM taskflow_messages")
    return float(expiry) if expiry is not None else 0.0


def host_now(store: Store) -> float:
    """The broker's host clock (see ``taskflow.brokers.sqlite._clock``), read from its anchor."""
    try:
        [(anchor,)] = store.query("SELECT anchor FROM taskflow_clock")
    except sqlite3.OperationalError:  # a file without one judges by the wall clock
        return time.time()
    return float(anchor) + time.monotonic()


async def test_a_stopped_worker_resuming_past_its_lease_runs_its_message_once(
    start_worker: Callable[..., WorkerProcess], store: Store, ledger: Ledger
) -> None:
    # Given a worker alone on the file, running a 3 s message with a 2 s lease
    a = start_worker("A", "--concurrency", "2")
    [sent] = await send(app.build(str(store.path)), "steady", [(0, 3.0)])
    await wait_for(lambda: len(ledger.runs("start")) == 1, 20, "A to start it")
    [child] = ledger.pids("A")
    # When its process is stopped until the lease is well past its deadline, then resumed
    os.kill(child, signal.SIGSTOP)
    try:
        await wait_for(lambda: process_state(child) == "T", 5, "the child to stop")
        await wait_for(
            lambda: latest_lease_expiry(store) < host_now(store) - 1.0, 10, "the lease to expire"
        )
        assert store.states() == (0, 1, 0)
    finally:
        os.kill(child, signal.SIGCONT)
    # Then its own reaper does not take the message back, the late heartbeat renews it,
    # and the ack lands: one run, nothing left, nothing fenced
    await wait_for(lambda: len(ledger.runs("end")) == 1, 10, "the message to finish")
    await wait_for(lambda: store.states() == (0, 0, 0), 5, "the ack")
    assert [r.message_id for r in ledger.runs("start")] == [sent.id]
    assert "lease_lost" not in a.output() and "reclaimed" not in a.output()


FAKETIME_LIBRARIES = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
]


class WallClock:
    """A wall-clock offset that libfaketime applies to every process started with ``env``.

    Only the wall clock moves (``FAKETIME_DONT_FAKE_MONOTONIC``), as with an NTP
    step; the offset is read again on every call, so a step reaches running
    processes at once.
    """

    def __init__(self, directory: Path) -> None:
        library = next((p for p in FAKETIME_LIBRARIES if Path(p).exists()), None)
        if library is None:
            pytest.skip("libfaketime is not installed (Debian package faketime)")
        self.file = directory / "faketime"
        self.file.write_text("+0\n")
        self.env = {
            "LD_PRELOAD": library,
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def step(self, seconds: int) -> None:
        self.file.write_text(f"{seconds:+d}\n")


async def test_a_forward_wall_clock_step_expires_no_lease(
    start_worker: Callable[..., WorkerProcess], store: Store, ledger: Ledger, tmp_path: Path
) -> None:
    # Given two workers on one host clock running four 6 s messages (2 s lease)
    clock = WallClock(tmp_path)
    a = start_worker("A", "--concurrency", "4", **clock.env)
    b = start_worker("B", "--concurrency", "4", **clock.env)
    await wait_for(lambda: bool(ledger.pids("A") and ledger.pids("B")), 20, "A and B to start")
    sent = await send(app.build(str(store.path)), "steady", [(i, 6.0) for i in range(4)])
    await wait_for(lambda: len(ledger.runs("start")) == 4, 5, "all four to start")
    # When the wall clock steps an hour ahead under both
    clock.step(3600)
    # Then the four finish where they run, once each, and nothing is reclaimed
    await wait_for(lambda: len(ledger.runs("end")) == 4, 20, "the four to finish")
    await wait_for(lambda: store.states() == (0, 0, 0), 5, "the acks")
    starts, ends = ledger.runs("start"), ledger.runs("end")
    assert Counter(r.message_id for r in starts) == Counter(m.id for m in sent)
    # (the step really reached the workers: their clock moved an hour between start and end)
    assert min(e.at for e in ends) - max(s.at for s in starts) >= 3600
    for worker in (a, b):
        assert "reclaimed" not in worker.output() and "lease_lost" not in worker.output()


async def test_a_backward_wall_clock_step_does_not_keep_a_dead_workers_messages(
    start_worker: Callable[..., WorkerProcess], store: Store, ledger: Ledger, tmp_path: Path
) -> None:
    # Given worker A holding four messages (2 s lease), and an idle worker B, on one host clock
    clock = WallClock(tmp_path)
    a = start_worker("A", "--concurrency", "4", **clock.env)
    sent = await send(app.build(str(store.path)), "sleepy", [(i, 30.0) for i in range(4)])
    await wait_for(lambda: len(ledger.runs("start", "A")) == 4, 20, "A to start all four")
    start_worker("B", "--concurrency", "4", **clock.env)
    await wait_for(lambda: bool(ledger.pids("B")), 20, "B to start")
    # When the wall clock steps an hour back and A is SIGKILLed
    clock.step(-3600)
    os.killpg(a.pid, signal.SIGKILL)
    assert a.process.wait(10) == -signal.SIGKILL
    killed = time.monotonic()
    # Then B runs all four within the lease and a reaper interval, not an hour later
    await wait_for(lambda: len(ledger.runs("end", "B")) == 4, 20, "B to run all four")
    assert time.monotonic() - killed <= RECOVERY_BOUND + 1.0
    await wait_for(lambda: store.states() == (0, 0, 0), 5, "the acks")
    b_starts = ledger.runs("start", "B")
    assert Counter(r.message_id for r in b_starts) == Counter(m.id for m in sent)
    # (the step really reached B: its clock is an hour behind A's)
    assert max(r.at for r in b_starts) < min(r.at for r in ledger.runs("start", "A")) - 3000
