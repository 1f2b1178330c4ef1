"""Fault tests for RabbitMQBroker with real worker processes (RELIABILITY.md scenarios).

Workers run as ``python -m taskflow worker tests.apps.rabbitmq_app:broker``;
every actor run is written to a ledger (a file per process) outside the
system under test. Each test first proves its fault happened, then counts
every message it sent.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aio_pika
import anyio
import pytest
import redis

from taskflow import BrokerUnavailable, Message
from taskflow.broker import Envelope
from taskflow.brokers.rabbitmq import RabbitMQBroker
from tests.apps import rabbitmq_app as app
from tests.apps.rabbitmq_app import (
    Row,
    ServerLog,
    close_connections,
    delete_queues,
    rabbitmqctl,
    read_ledger,
    server_lock,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
QUEUE = "work"


class WorkerProcess:
    """A ``taskflow worker`` parent process in its own process group, with its log."""

    def __init__(self, log: Path, env: dict[str, str], *args: str) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "taskflow", "worker", "tests.apps.rabbitmq_app:broker"]
                + ["--queues", QUEUE, "--log-level", "info", *args],
                cwd=REPO,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self, count: int = 1, timeout: float = 20) -> None:
        """Wait until ``count`` worker processes are consuming."""
        with anyio.fail_after(timeout):
            while self.log().count(f"consuming {QUEUE}") < count:
                if self.process.poll() is not None:
                    raise AssertionError(f"worker exited early:\n{self.log()}")
                await anyio.sleep(0.05)

    def terminate(self) -> None:
        """SIGTERM to the supervisor only; it forwards one to its children."""
        os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole process group (supervisor and workers)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def wait(self, timeout: float) -> int:
        with anyio.fail_after(timeout):
            while self.process.poll() is None:
                await anyio.sleep(0.05)
        return self.process.returncode


class Scenario:
    """One test's prefix, ledger, producer broker and worker processes."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.url = url
        self.prefix = f"tf-fault-{uuid.uuid4().hex[:10]}."
        self.ledger = tmp_path / "ledger"
        self.ledger.mkdir()
        self.tmp_path = tmp_path
        self.options: dict[str, Any] = {}
        self.workers: list[WorkerProcess] = []
        self.producer = RabbitMQBroker(
            url, prefix=self.prefix, connection_name=f"taskflow-test {self.prefix} producer"
        )

    def worker(
        self,
        *args: str,
        options: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        env = {
            app.URL_ENV: self.url,
            app.PREFIX_ENV: self.prefix,
            app.OPTIONS_ENV: json.dumps({**self.options, **(options or {})}),
            app.LEDGER_ENV: str(self.ledger),
            **(env or {}),
        }
        log = self.tmp_path / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(log, env, *args)
        self.workers.append(worker)
        return worker

    def rows(self) -> list[Row]:
        return read_ledger(self.ledger)

    def done(self) -> Counter[str]:
        return Counter(r.id for r in self.rows() if r.event == "done")

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.05)

    async def all_done(self, ids: set[str], timeout: float = 30) -> None:
        await self.until(lambda: ids <= set(self.done()), timeout, "all messages done")

    async def send(self, messages: list[Message[Any]]) -> list[Message[Any]]:
        await self.producer.enqueue(messages)
        return messages

    def cleanup(self) -> None:
        for worker in self.workers:
            worker.kill()
        for worker in self.workers:
            try:
                worker.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        delete_queues(self.url, self.prefix, {QUEUE}, exchanges=True)


@pytest.fixture
def exclusive_rabbitmq() -> Iterator[None]:
    """For tests that stop the node: no other RabbitMQ test (of any run) meanwhile."""
    with server_lock(exclusive=True):
        yield


@pytest.fixture
async def scenario(
    tmp_path: Path, amqp_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[Scenario]:
    s = Scenario(tmp_path, amqp_url)
    with ExitStack() as stack:
        if "exclusive_rabbitmq" not in request.fixturenames:
            stack.enter_context(server_lock(exclusive=False))
        try:
            async with s.producer:
                yield s
        finally:
            await anyio.to_thread.run_sync(s.cleanup)


def records(n: int, ms: int) -> list[Message[Any]]:
    return [app.record.message(ms) for _ in range(n)]


def log_time(log: str, text: str) -> float:
    """Unix time of the first log line containing ``text`` (the CLI logs local time)."""
    line = next(line for line in log.splitlines() if text in line)
    stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def by_id(rows: list[Row], event: str) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        if r.event == event:
            out.setdefault(r.id, []).append(r)
    return out


# -- S24: no fault at all, high volume ------------------------------------------------


@pytest.fixture
def redis_ledger(redis_url: str) -> Iterator[tuple[str, str]]:
    """A Redis hash (on the test Redis, not faulted) counting runs per message id."""
    key = f"tf-test-ledger-{uuid.uuid4().hex}"
    yield redis_url, key
    client = redis.Redis.from_url(redis_url)
    client.delete(key)
    client.close()


def tallies(ledger: tuple[str, str]) -> Counter[str]:
    client = redis.Redis.from_url(ledger[0])
    try:
        raw: dict[bytes, bytes] = client.hgetall(ledger[1])  # type: ignore[assignment]
        return Counter({k.decode(): int(v) for k, v in raw.items()})
    finally:
        client.close()


async def _drain_exactly_once(
    scenario: Scenario,
    ledger: tuple[str, str],
    count: int,
    ms: int,
    *args: str,
    timeout: float = 90,
) -> None:
    server_log = ServerLog()
    messages = [app.tally.message(ms) for _ in range(count)]
    ids = {m.id for m in messages}
    for start in range(0, count, 1000):  # a backlog before the worker starts
        await scenario.send(messages[start : start + 1000])
    worker = scenario.worker(*args, env={app.REDIS_LEDGER_ENV: " ".join(ledger)})

    def all_ran() -> bool:
        return len(tallies(ledger)) >= count

    await scenario.until(all_ran, timeout, "every message ran")
    await scenario.producer.join(QUEUE, timeout=40)
    runs = tallies(ledger)
    assert set(runs) == ids  # lost = 0
    twice = sum(runs.values()) - count
    assert twice == 0, f"{twice} extra runs over {count} messages"
    # RabbitMQ closes a channel on an ack it cannot match (`unknown delivery
    # tag`) and redelivers all it held: none of that happened.
    assert server_log.channel_errors(scenario.prefix) == []
    assert "lost the connection" not in worker.log()
    assert await scenario.producer.stats(QUEUE) == (0, 0, 0, 0)


async def test_noop_messages_run_exactly_once_at_concurrency_100(
    scenario: Scenario, redis_ledger: tuple[str, str]
) -> None:
    await _drain_exactly_once(scenario, redis_ledger, 10_000, 0, "--concurrency", "100")


async def test_io_bound_messages_run_exactly_once_at_concurrency_1000(
    scenario: Scenario, redis_ledger: tuple[str, str]
) -> None:
    await _drain_exactly_once(scenario, redis_ledger, 5_000, 50, "--concurrency", "1000")


# -- S3: kill -9 mid-task ---------------------------------------------------------------


async def test_sigkill_mid_task_loses_nothing(scenario: Scenario) -> None:
    sent = {m.id for m in await scenario.send(records(32, 400))}
    a = scenario.worker("--concurrency", "8")
    await scenario.until(lambda: len(scenario.rows()) >= 8, 20, "A running 8 tasks")
    a.kill()
    assert await a.wait(5) == -signal.SIGKILL  # the fault happened
    killed_at = time.time()
    started_by_a = {r.id for r in scenario.rows() if r.event == "start"}
    unfinished = started_by_a - set(scenario.done())
    assert unfinished  # A died mid-task
    scenario.worker("--concurrency", "8")
    await scenario.all_done(sent)
    done = scenario.done()
    assert set(done) == sent  # lost = 0
    duplicates = sum(done.values()) - len(sent)
    assert duplicates <= 16  # ≤ running + prefetched by A at the kill
    for mid in unfinished:  # every orphan came back, counted as a redelivery
        reruns = [r for r in by_id(scenario.rows(), "start")[mid] if r.at > killed_at]
        assert reruns and all(r.deliveries >= 2 for r in reruns)
    await scenario.producer.join(QUEUE, timeout=40)
    assert await scenario.producer.stats(QUEUE) == (0, 0, 0, 0)


# -- S1: SIGTERM, grace sufficient -----------------------------------------------------


async def test_sigterm_finishes_running_and_returns_prefetched(scenario: Scenario) -> None:
    sent = {m.id for m in await scenario.send(records(40, 500))}
    a = scenario.worker("--concurrency", "4", "--shutdown-timeout", "10")
    await scenario.until(lambda: len(scenario.rows()) >= 4, 20, "A running")
    # Only A has run anything yet: its pids are those in the ledger before B starts.
    pids_a = {r.pid for r in scenario.rows()}
    b = scenario.worker("--concurrency", "4")
    await b.ready()
    a.terminate()
    signalled = time.time()
    assert await a.wait(10) == 0  # exits cleanly once its running tasks finished
    exited = time.time()
    rows = scenario.rows()
    started_a = {r.id for r in rows if r.pid in pids_a and r.event == "start"}
    done_a = {r.id for r in rows if r.pid in pids_a and r.event == "done"}
    assert started_a and started_a == done_a  # running tasks finished in the grace period
    # No new work after the signal (the supervisor forwards it to the worker first).
    assert all(r.at < signalled + 0.5 for r in rows if r.pid in pids_a and r.event == "start")
    assert exited - signalled < 0.5 + 2.5  # the longest task, plus process exit
    await scenario.all_done(sent)
    done = scenario.done()
    assert set(done) == sent and sum(done.values()) == len(sent)  # lost 0, duplicates 0
    assert "shutdown timeout" not in a.log()


# -- S2: SIGTERM with tasks that outlive the grace period, then SIGKILL ------------------


async def test_sigterm_past_grace_requeues_then_sigkill(scenario: Scenario) -> None:
    slow_async = [app.slow_first.message(20_000) for _ in range(2)]
    slow_sync = [app.slow_first_sync.message(20_000) for _ in range(2)]
    await scenario.send(slow_async + slow_sync)
    a = scenario.worker("--concurrency", "4", "--shutdown-timeout", "1")
    await scenario.until(lambda: len(scenario.rows()) >= 4, 20, "A running all four")
    b = scenario.worker("--concurrency", "4")
    await b.ready()
    a.terminate()
    signalled = time.time()
    ids = {m.id for m in slow_async + slow_sync}
    # At the end of the grace period A cancels the async tasks, gives up on
    # the sync ones (their threads cannot be stopped) and requeues all four:
    # B runs them again at once, as their second delivery.
    await scenario.until(lambda: ids <= set(scenario.done()), 10, "B reran all four")
    second = [r for r in scenario.rows() if r.event == "start" and r.at > signalled]
    assert sorted(r.deliveries for r in second) == [2, 2, 2, 2]
    cancelled = log_time(a.log(), "requeueing running messages")
    assert cancelled >= signalled + 1 - 0.1  # after the grace period
    assert all(r.at < cancelled + 2 for r in second)  # picked up at once, not after a lease
    # A still waits for its sync threads; the orchestrator's SIGKILL ends it.
    assert a.process.poll() is None
    a.kill()
    assert await a.wait(5) == -signal.SIGKILL
    await scenario.producer.join(QUEUE, timeout=40)
    assert await scenario.producer.stats(QUEUE) == (0, 0, 0, 0)
    starts = by_id(scenario.rows(), "start")
    assert all(sorted(r.deliveries for r in starts[i]) == [1, 2] for i in ids)  # ≤ 2 runs
    assert scenario.done() == Counter(dict.fromkeys(ids, 1))  # lost 0


# -- S5: dropped connections, and delayed messages across the drop ---------------------


async def test_connection_drop_while_workers_run(scenario: Scenario) -> None:
    workers = [scenario.worker("--concurrency", "8") for _ in range(2)]
    for w in workers:
        await w.ready()
    delayed = [app.record.message_with_options(args=(0,), delay=1.0 + i / 10) for i in range(20)]
    sent_at = time.time()
    await scenario.send(delayed)
    confirmed: set[str] = set()
    failed = 0

    async def produce() -> None:
        nonlocal failed
        for _ in range(150):
            message = app.record.message(20)
            try:
                await scenario.send([message])
            except BrokerUnavailable:
                failed += 1
            else:
                confirmed.add(message.id)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await anyio.sleep(0.8)
        closed = await anyio.to_thread.run_sync(close_connections, scenario.prefix)
    assert closed >= 6  # both workers and the producer lost both their connections
    assert failed == 0  # the producer rode out the drop
    await scenario.until(
        lambda: all("reconnected to RabbitMQ" in w.log() for w in workers), 10, "reconnects"
    )
    assert all("lost the connection to RabbitMQ" in w.log() for w in workers)
    all_ids = confirmed | {m.id for m in delayed}
    await scenario.all_done(all_ids)
    done = scenario.done()
    assert set(done) == all_ids  # lost = 0
    assert sum(done.values()) - len(all_ids) <= 2 * (8 + 8)  # ≤ in flight at the drop
    starts = by_id(scenario.rows(), "start")
    for i, m in enumerate(delayed):  # never early
        assert min(r.at for r in starts[m.id]) >= sent_at + 1.0 + i / 10 - 0.05
    await scenario.producer.join(QUEUE, timeout=40)
    assert await scenario.producer.stats(QUEUE) == (0, 0, 0, 0)
    for w in workers:
        assert w.process.poll() is None  # nobody had to restart
        assert "restarting it" not in w.log()


async def test_broker_restart_with_workers_running(
    exclusive_rabbitmq: None, scenario: Scenario
) -> None:
    scenario.producer._link.timeout = 2  # the producer's, not the workers'
    worker = scenario.worker("--concurrency", "8")
    await worker.ready()
    before = await scenario.send(records(20, 10))
    delayed = [app.record.message_with_options(args=(0,), delay=3.0) for _ in range(5)]
    delayed_at = time.time()
    await scenario.send(delayed)
    await scenario.all_done({m.id for m in before})
    stopped = False
    try:
        stopping = time.time()
        await anyio.to_thread.run_sync(rabbitmqctl, "stop_app")
        stopped = True
        with pytest.raises(BrokerUnavailable):
            await scenario.send(records(1, 0))  # no silent success while it is down
    finally:
        await anyio.to_thread.run_sync(rabbitmqctl, "start_app")
        await anyio.to_thread.run_sync(rabbitmqctl, "await_startup")
    assert stopped
    after = await scenario.send(records(20, 10))
    ids = {m.id for m in before + delayed + after}
    await scenario.all_done(ids, timeout=30)
    assert "lost the connection to RabbitMQ" in worker.log()
    assert set(scenario.done()) == ids  # durable queue and delay ladder kept everything
    starts = by_id(scenario.rows(), "start")
    for m in delayed:  # they sat in the ladder through the restart, and were not early
        assert min(r.at for r in starts[m.id]) >= max(stopping, delayed_at + 3.0)
    assert worker.process.poll() is None and "restarting it" not in worker.log()


# -- S8: a message that kills its worker -----------------------------------------------


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_worker_killing_message_is_dead_lettered_after_max_deliveries(
    scenario: Scenario, queue_type: str
) -> None:
    scenario.options = {"queue_type": queue_type, "max_deliveries": 3}
    scenario.producer = RabbitMQBroker(
        scenario.url,
        prefix=scenario.prefix,
        queue_type=queue_type,  # type: ignore[arg-type]
        connection_name=f"taskflow-test {scenario.prefix} producer",
    )
    good = [app.add.message(1, 2) for _ in range(20)]
    async with scenario.producer:
        await scenario.send(good)
        poison = app.crash.message()
        await scenario.send([poison])
        # Alone behind the good ones, as a held neighbour would be counted at each crash too.
        worker = scenario.worker("--concurrency", "1", "--prefetch", "1")
        await scenario.until(
            lambda: "delivery_limit_exceeded" in worker.log(), 30, "the poison dead-lettered"
        )
        more = [app.add.message(3, 4) for _ in range(10)]
        await scenario.send(more)
        await scenario.all_done({m.id for m in good + more})
        runs = [r for r in scenario.rows() if r.id == poison.id]
        assert sorted(r.deliveries for r in runs) == [1, 2, 3]  # counted broker-side across crashes
        assert worker.log().count("restarting it") == 3
        [dead] = await scenario.producer.dead_letters(QUEUE)
        assert dead.id == poison.id and dead.reason.startswith("delivery_limit_exceeded")
        assert scenario.done() == Counter({m.id: 1 for m in good + more})
        await scenario.producer.join(QUEUE, timeout=40)


# -- S11, S12, S13, S19: bad input -----------------------------------------------------


async def test_bad_input_is_dead_lettered_and_the_worker_keeps_going(scenario: Scenario) -> None:
    canary = "CANARY-" + uuid.uuid4().hex[:8]
    bad: dict[str, tuple[bytes, str]] = {
        "bytes": (os.urandom(64) + canary.encode(), "decode_error"),
        "utf8": (b'{"x": "\xff\xfe' + canary.encode() + b'"}', "decode_error"),
        "array": (b'["' + canary.encode() + b'"]', "decode_error"),
        "nested": (b"[" * 100_000, "decode_error"),
        "nan": (b'{"v": NaN, "c": "' + canary.encode() + b'"}', "decode_error"),
        "bigint": (b'{"v": ' + b"9" * 1_000_000 + b"}", "decode_error"),
        "huge": (b'{"c": "' + canary.encode() + b'"' + b" " * (2 << 20) + b"}", "too_large"),
    }
    worker = scenario.worker("--concurrency", "4")
    await worker.ready()
    names = await scenario.producer._declarer.ensure(QUEUE)
    good = [app.add.message(1, 2) for _ in range(50)]
    unknown: Message[Any] = Message(queue=QUEUE, actor="not_declared_anywhere", args=(canary,))
    wrong_arity = app.add.message_with_options(args=(1, 2, canary))
    connection = await aio_pika.connect(scenario.url)
    async with connection:
        channel = await connection.channel()
        for i, message in enumerate(good):
            await scenario.send([message])
            if i % 7 == 0 and bad:
                key, (body, _) = bad.popitem()
                await channel.default_exchange.publish(
                    aio_pika.Message(body, message_id=f"raw-{key}"), routing_key=names.main
                )
    await scenario.send([unknown, wrong_arity])
    await scenario.all_done({m.id for m in good})
    expected = {
        "raw-bytes": "decode_error",
        "raw-utf8": "decode_error",
        "raw-array": "decode_error",
        "raw-nested": "decode_error",
        "raw-nan": "decode_error",
        "raw-bigint": "decode_error",
        "raw-huge": "too_large",
        unknown.id: "unknown_actor",
        wrong_arity.id: "invalid_arguments",
    }

    async def all_dead() -> bool:
        return (await scenario.producer.stats(QUEUE)).dead == len(expected)

    with anyio.fail_after(10):
        while not await all_dead():
            await anyio.sleep(0.05)
    dead = {d.id: d for d in await scenario.producer.dead_letters(QUEUE)}
    assert {i: dead[i].reason.split(":", 1)[0] for i in dead} == expected
    assert dead["raw-huge"].body.startswith(b'{"c": "CANARY-')  # raw bytes kept
    assert scenario.done() == Counter({m.id: 1 for m in good})
    log = worker.log()
    assert "restarting it" not in log and worker.process.poll() is None
    assert canary not in log  # size, hash and reason only


# -- S18: duplicates, injected ---------------------------------------------------------


async def test_duplicates_are_visible_and_bounded(scenario: Scenario) -> None:
    worker = scenario.worker("--concurrency", "2")
    await worker.ready()
    twice = app.add.message(5, 6)
    body = scenario.producer.codec.encode(twice)
    await scenario.producer._enqueue(QUEUE, [Envelope(twice.id, body, 0, 0)] * 2)
    crasher = app.crash_before_ack.message()
    await scenario.send([crasher])
    await scenario.until(lambda: scenario.done()[crasher.id] == 2, 20, "the rerun")
    await scenario.until(lambda: scenario.done()[twice.id] == 2, 20, "both copies")
    runs = sorted(r.deliveries for r in scenario.rows() if r.id == crasher.id)
    assert runs == [1, 2]  # exactly one duplicate, flagged as a redelivery
    assert worker.log().count("restarting it") == 1
    await scenario.producer.join(QUEUE, timeout=40)
    assert await scenario.producer.stats(QUEUE) == (0, 0, 0, 0)
    assert len(scenario.rows()) == 4  # two runs of each, nothing else


async def test_join_from_a_producer_waits_for_another_process_s_deliveries(
    scenario: Scenario,
) -> None:
    """A broker that does not consume sees the worker's unacked messages and joins after them."""
    worker = scenario.worker("--processes", "1", "--concurrency", "4")
    await worker.ready()
    sent = await scenario.send(records(4, 12_000))
    ids = {m.id for m in sent}
    # The fault: every message has left the queue for the other process, so
    # AMQP alone reads the queue as empty while all four still run.
    await scenario.until(
        lambda: len([r for r in scenario.rows() if r.event == "start"]) == 4, 20, "all started"
    )
    stats = await scenario.producer.stats(QUEUE)
    assert stats.ready == 0 and stats.delayed == 0
    # The management statistics lag by up to two 5 s intervals.
    with anyio.fail_after(11):
        while (await scenario.producer.stats(QUEUE)).in_flight == 0:
            assert not set(scenario.done()), "finished before the unacked count was seen"
            await anyio.sleep(0.1)
    assert not set(scenario.done())
    await scenario.producer.join(QUEUE, timeout=40)
    assert set(scenario.done()) == ids
    out = rabbitmqctl("list_queues", "name", "messages_unacknowledged")
    assert f"{scenario.prefix}{QUEUE}\t0" in out
