"""SQLiteBroker beyond the shared contract: URLs, leases, fencing, reaping, polling, locking."""

from __future__ import annotations

import random
import sqlite3
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

import taskflow
from taskflow import BrokerUnavailable, Delivery, LeaseLost, Worker
from taskflow.brokers.sqlite import SQLiteBroker
from tests.brokers.test_contract import take as contract_take

pytestmark = pytest.mark.anyio

QUEUE = "jobs"


def db_rows(path: Path, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as conn:
        return conn.execute(query, params).fetchall()


def sqlite_now(path: Path) -> float:
    [(now,)] = db_rows(path, "SELECT (julianday('now') - 2440587.5) * 86400.0")
    return float(now)


def block_loop(seconds: float) -> None:
    """Block the calling thread (the event loop, when called from a coroutine)."""
    time.sleep(seconds)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "broker.sqlite3"


@pytest.fixture
async def broker(path: Path) -> AsyncIterator[SQLiteBroker]:
    async with SQLiteBroker(path, visibility_timeout=2.0) as b:
        yield b


def echo_actor(broker: SQLiteBroker) -> Any:
    @broker.actor(queue=QUEUE)
    async def echo(x: int) -> int:
        return x

    return echo


async def take(
    broker: SQLiteBroker, n: int = 1, *, prefetch: int = 1, timeout: float = 10.0
) -> list[Delivery]:
    return await contract_take(broker, QUEUE, n, prefetch=prefetch, timeout=timeout)


async def poll_until(predicate: Callable[[], Any], timeout: float) -> float:
    """Wait until ``predicate()`` is true; return the seconds it took."""
    start = time.monotonic()
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.01)
    return time.monotonic() - start


def count_begins(broker: SQLiteBroker) -> list[str]:
    """Record every transaction the broker's loop-side connection starts."""
    begins: list[str] = []
    broker._db._connection().set_trace_callback(
        lambda statement: begins.append(statement) if statement.startswith("BEGIN") else None
    )
    return begins


# -- URLs -----------------------------------------------------------------------


def test_from_url_relative_absolute_and_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = taskflow.broker_from_url("sqlite:///data/tasks.db")
    assert isinstance(relative, SQLiteBroker)
    assert relative.path == str(tmp_path / "data" / "tasks.db")
    absolute = taskflow.broker_from_url(
        f"sqlite:///{tmp_path}/abs.db?visibility_timeout=5&max_deliveries=3&synchronous=normal"
    )
    assert isinstance(absolute, SQLiteBroker)
    assert absolute.path == str(tmp_path / "abs.db")
    assert absolute.visibility_timeout == 5.0 and absolute.max_deliveries == 3
    assert absolute.synchronous == "NORMAL"
    assert absolute.reaper_interval == 1.0 and absolute.heartbeat_interval == 5.0 / 3
    overridden = SQLiteBroker.from_url("sqlite:///x.db?visibility_timeout=5", visibility_timeout=7)
    assert overridden.visibility_timeout == 7


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite:///x.db?bogus=1"]
)
def test_from_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        SQLiteBroker.from_url(url)


def test_broker_from_env_defaults_to_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKFLOW_BROKER_URL", raising=False)
    default = taskflow.broker_from_env()
    assert isinstance(default, SQLiteBroker)
    assert default.path == str(tmp_path / "taskflow.sqlite3")
    monkeypatch.setenv("TASKFLOW_BROKER_URL", f"sqlite:///{tmp_path}/env.db")
    from_env = taskflow.broker_from_env(visibility_timeout=3)
    assert isinstance(from_env, SQLiteBroker)
    assert from_env.path == str(tmp_path / "env.db") and from_env.visibility_timeout == 3


def test_reaper_interval_default() -> None:
    assert SQLiteBroker("a.db").reaper_interval == 1.0
    assert SQLiteBroker("a.db", visibility_timeout=2).reaper_interval == 0.5
    assert SQLiteBroker("a.db", reaper_interval=0.2).reaper_interval == 0.2


# -- storage --------------------------------------------------------------------


async def test_wal_busy_timeout_and_sqlite_clock_delays(broker: SQLiteBroker, path: Path) -> None:
    echo = echo_actor(broker)
    assert db_rows(path, "PRAGMA journal_mode") == [("wal",)]
    conn = broker._db._connection()
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (10_000,)
    before = sqlite_now(path)
    await echo.send_with_options(args=(1,), delay=30)
    after = sqlite_now(path)
    [(ready_at,)] = db_rows(path, "SELECT ready_at FROM taskflow_messages")
    assert before + 29.9 <= ready_at <= after + 30.1


async def test_send_many_is_one_transaction(broker: SQLiteBroker) -> None:
    echo = echo_actor(broker)
    begins = count_begins(broker)
    await echo.send_many([(i,) for i in range(500)])
    assert begins == ["BEGIN IMMEDIATE"]
    assert (await broker.stats(QUEUE)).ready == 500


async def test_concurrent_acks_share_commits(broker: SQLiteBroker) -> None:
    echo = echo_actor(broker)
    await echo.send_many([(i,) for i in range(100)])
    got = await take(broker, 100, prefetch=100)
    begins = count_begins(broker)
    async with anyio.create_task_group() as tg:
        for d in got:
            tg.start_soon(d.ack)
    assert await broker.stats(QUEUE) == (0, 0, 0, 0)
    # The first ack commits alone; the other 99 arrive while it runs and share one commit.
    assert len(begins) <= 3


async def test_concurrent_sends_share_commits(broker: SQLiteBroker) -> None:
    # Given 100 tasks of one process each awaiting a send (a web app under load)
    echo = echo_actor(broker)
    await echo.send(0)
    begins = count_begins(broker)
    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(echo.send, i)
    # Then they are committed (and synced) together, not one transaction each
    assert (await broker.stats(QUEUE)).ready == 101
    assert 1 <= len(begins) <= 3, begins


async def test_a_claim_shares_its_commit_with_the_acks_around_it(broker: SQLiteBroker) -> None:
    # Given a consumer holding 10 deliveries, with 10 more messages waiting
    echo = echo_actor(broker)
    await echo.send_many([(i,) for i in range(20)])
    got = await take(broker, 10, prefetch=10)
    begins = count_begins(broker)
    claimed: list[Any] = []

    async def claim() -> None:
        claimed.extend(await broker._claim(QUEUE, 10))

    # When it acks them all and claims the next batch at once
    async with anyio.create_task_group() as tg:
        for d in got:
            tg.start_soon(d.ack)
        tg.start_soon(claim)
    # Then the first ack commits alone, and the other nine share one commit with the claim
    assert len(claimed) == 10
    assert len(begins) == 2, begins
    assert await broker.stats(QUEUE) == (0, 0, 10, 0)
    for r in claimed:
        await r.ack()


async def test_sends_wait_for_the_disk_and_settlements_do_not(broker: SQLiteBroker) -> None:
    # Given a broker that syncs every commit (synchronous=FULL, the default)
    echo = echo_actor(broker)
    await echo.send(0)
    conn = broker._db._connection()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)

    def commits() -> list[str]:
        """The sync level of each transaction, from the pragma set before its BEGIN."""
        levels, level = [], "FULL"
        for statement in statements:
            if statement.startswith("PRAGMA synchronous="):
                level = statement.split("=")[1]
            elif statement.startswith("BEGIN"):
                levels.append(level)
        statements.clear()
        return levels

    # Then a send's commit is synced, a claim's and an ack's are not (a power cut
    # losing them only runs the message again), and FULL is back after each
    await echo.send(1)
    assert commits() == ["FULL"]
    [d] = await take(broker)
    assert commits() == ["NORMAL"]
    await d.ack()
    assert commits() == ["NORMAL"]
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)
    # And a commit holding a send and an ack together is synced (the first ack commits
    # alone; the send and the second ack arrive while it runs and share the next one)
    await echo.send(2)
    first, second = await take(broker, 2, prefetch=2)
    commits()
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.ack)
        tg.start_soon(echo.send, 3)
        tg.start_soon(second.ack)
    assert commits() == ["NORMAL", "FULL"]


async def test_claim_is_one_statement_for_the_batch(broker: SQLiteBroker, path: Path) -> None:
    echo = echo_actor(broker)
    await echo.send_many([(i,) for i in range(10)])
    begins = count_begins(broker)
    got = await take(broker, 10, prefetch=10)
    assert len(begins) == 1
    assert [d.message.args[0] for d in got] == list(range(10))
    rows = db_rows(path, "SELECT lease_owner, deliveries FROM taskflow_messages")
    assert rows == [(broker.owner, 1)] * 10


# -- claims cost the same however many messages are delayed -------------------------


def claim_steps(path: Path, limit: int) -> tuple[list[tuple[int, int, int]], int]:
    """Run the claim's candidate query on ``path``; return its rows and SQLite VM steps."""
    from taskflow.brokers.sqlite import _sql as sql

    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.create_function("taskflow_now", 0, time.time, deterministic=True)
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        conn.set_progress_handler(count, 1)
        rows = sql.candidates(conn, QUEUE, limit)
        return rows, steps


def test_claim_query_plans_are_index_searches_bounded_by_ready_at(path: Path) -> None:
    from taskflow.brokers.sqlite import _sql as sql

    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.create_function("taskflow_now", 0, time.time, deterministic=True)
        sql.create_schema(conn)
        params = {"queue": QUEUE, "priority": 0, "limit": 100}
        plans = {
            name: [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", params)]
            for name, statement in [
                ("top", sql.TOP_PRIORITY),
                ("next", sql.NEXT_PRIORITY),
                ("candidates", sql.CANDIDATES),
            ]
        }
    index = "SEARCH taskflow_messages USING INDEX taskflow_messages_next"
    assert plans == {
        "top": [f"{index} (queue=?)"],
        "next": [f"{index} (queue=? AND priority<?)"],
        # The range on ready_at ends the walk at the first delayed message; no sort.
        "candidates": [f"{index} (queue=? AND priority=? AND ready_at<?)"],
    }


async def test_claims_cost_the_same_with_50000_delayed_messages(
    broker: SQLiteBroker, path: Path
) -> None:
    # Given 10 ready messages at each of three priorities
    echo = echo_actor(broker)
    ready = [
        await echo.send_many([echo.message_with_options(args=(i,), priority=p) for i in range(10)])
        for p in (0, 5, 9)
    ]
    alone, steps_alone = claim_steps(path, 100)
    # When 50,000 messages are delayed behind them, at the same priorities
    for p in (0, 5, 9):
        await echo.send_many(
            [
                echo.message_with_options(args=(i,), priority=p, delay=3600)
                for i in range(50_000 // 3)
            ]
        )
    assert (await broker.stats(QUEUE))[:2] == (30, 3 * (50_000 // 3))
    crowded, steps_crowded = claim_steps(path, 100)
    # Then a claim finds the same 30 in the same order (best priority first, then FIFO)
    assert crowded == alone and len(alone) == 30
    ids = [r[0] for r in db_rows(path, "SELECT seq FROM taskflow_messages ORDER BY seq")]
    assert [seq for seq, _, _ in crowded] == ids[20:30] + ids[10:20] + ids[:10]
    assert {len(batch) for batch in ready} == {10}
    # And at the same cost: SQLite's own count of steps, not a timing
    assert steps_crowded <= steps_alone * 1.2 + 50, (steps_alone, steps_crowded)


# -- the host clock ----------------------------------------------------------------


async def test_every_broker_of_a_boot_reads_one_clock_that_a_step_does_not_move(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskflow.brokers.sqlite import _clock

    first = SQLiteBroker(path)
    async with first:
        # Given a wall clock stepped an hour ahead after the first broker opened the file
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600)
        async with SQLiteBroker(path) as second:
            # Then a broker opened after the step reads the same time as the first
            assert second.clock.anchor == first.clock.anchor
            assert abs(second.clock.now() - real()) < 1.0
            echo = echo_actor(second)
            await echo.send(1)
            assert (await second.stats(QUEUE)).ready == 1
    # And a file anchored in another boot is anchored again in this one
    db_rows(path, "UPDATE taskflow_clock SET boot = 'an earlier boot', anchor = 0")
    monkeypatch.setattr(time, "time", real)
    async with SQLiteBroker(path) as third:
        assert db_rows(path, "SELECT boot FROM taskflow_clock") == [(_clock.boot_id(),)]
        assert abs(third.clock.now() - time.time()) < 1.0


# -- leases -----------------------------------------------------------------------


@pytest.mark.parametrize("action", ["ack", "nack", "retry"])
async def test_late_settlement_after_lost_lease_is_refused(path: Path, action: str) -> None:
    # Given a worker whose heartbeat has stalled, and a healthy one on the same file
    stalled = SQLiteBroker(path, visibility_timeout=0.5, heartbeat_interval=60)
    healthy = SQLiteBroker(path, visibility_timeout=2.0, reaper_interval=0.1)
    echo = echo_actor(stalled)
    echo_actor(healthy)
    async with stalled, healthy:
        sent = await echo.send(1)
        [late] = await take(stalled)
        # When the lease expires and the healthy worker gets the message
        [fresh] = await take(healthy, timeout=5)
        assert fresh.message.id == sent.id and fresh.delivery_count == 2
        # Then the stalled worker's settlement is refused and changes nothing
        with pytest.raises(LeaseLost):
            if action == "ack":
                await late.ack()
            elif action == "nack":
                await late.nack("too late")
            else:
                await late.retry(0)
        assert await healthy.stats(QUEUE) == (0, 0, 1, 0)
        await fresh.ack()
        assert await healthy.stats(QUEUE) == (0, 0, 0, 0)


def lease_deadline(path: Path) -> float:
    """The latest lease expiry in the file (host time)."""
    [(deadline,)] = db_rows(path, "SELECT MAX(lease_expires) FROM taskflow_messages")
    return float(deadline)


async def test_a_late_heartbeat_loses_nothing_while_no_reaper_took_the_message(path: Path) -> None:
    # Given a worker whose heartbeat is late (60 s apart for a 0.3 s lease), alone on the file
    async with SQLiteBroker(
        path, visibility_timeout=0.3, heartbeat_interval=60, reaper_interval=0.05
    ) as b:
        echo = echo_actor(b)
        await echo.send_many([(1,), (2,)])
        first, second = await take(b, 2, prefetch=2)

        async def past_deadline() -> bool:
            return lease_deadline(path) < b.clock.now() - 0.2

        # When both leases are past their deadline (its own reaper runs every 50 ms)
        await poll_until(past_deadline, 5)
        assert await b.stats(QUEUE) == (0, 0, 2, 0)
        # Then the owner's ack still lands: nobody else can have had the message
        await first.ack()
        # And the late heartbeat renews what is still held
        b._heartbeat(b._database())()
        assert lease_deadline(path) > b.clock.now() + 0.2
        await second.ack()
        assert await b.stats(QUEUE) == (0, 0, 0, 0)


async def test_reaper_returns_orphans_on_an_idle_queue(path: Path) -> None:
    # Given a worker that dies holding three leases (its threads stop, nothing is handed back)
    dying = SQLiteBroker(path, visibility_timeout=1.0)
    echo = echo_actor(dying)
    await dying.connect()
    await echo.send_many([(i,) for i in range(3)])
    held = await take(dying, 3, prefetch=3)
    await dying.close()
    assert {d.delivery_count for d in held} == {1}
    # And another process's broker that only runs its reaper: nobody consumes
    async with SQLiteBroker(path, visibility_timeout=1.0, reaper_interval=0.25) as survivor:
        echo_actor(survivor)
        assert await survivor.stats(QUEUE) == (0, 0, 3, 0)

        async def returned() -> bool:
            return (await survivor.stats(QUEUE)).ready == 3

        # Then the leases come back within visibility_timeout + one reaper interval
        took = await poll_until(returned, 5)
        assert took <= 1.0 + 0.25 + 0.5
        again = await take(survivor, 3, prefetch=3)
        assert sorted(d.message.id for d in again) == sorted(d.message.id for d in held)
        assert {d.delivery_count for d in again} == {2}
        for d in again:
            await d.ack()


async def test_heartbeat_thread_keeps_leases_while_the_loop_is_blocked(path: Path) -> None:
    # Given a worker holding a message with a 0.6 s lease, and a rival whose reaper
    # would hand the message over the moment the lease expired
    holder = SQLiteBroker(path, visibility_timeout=0.6)
    rival = SQLiteBroker(path, visibility_timeout=0.6, reaper_interval=0.05)
    echo = echo_actor(holder)
    echo_actor(rival)
    async with holder, rival:
        await echo.send(1)
        [d] = await take(holder)
        [(first_expiry,)] = db_rows(path, "SELECT lease_expires FROM taskflow_messages")
        # When the event loop is blocked for more than three leases
        block_loop(2.0)
        # Then the heartbeat thread renewed the lease, nobody took it, and the ack is accepted
        [(owner, expiry)] = db_rows(
            path, "SELECT lease_owner, lease_expires FROM taskflow_messages"
        )
        assert owner == holder.owner
        assert expiry > first_expiry + 1.5
        assert (await rival.stats(QUEUE)).in_flight == 1
        await d.ack()
        assert await rival.stats(QUEUE) == (0, 0, 0, 0)


async def test_closing_consumer_hands_back_without_counting_a_delivery(
    broker: SQLiteBroker,
) -> None:
    echo = echo_actor(broker)
    await echo.send_many([(i,) for i in range(5)])
    [first] = await take(broker, 1, prefetch=5)
    assert await broker.stats(QUEUE) == (4, 0, 1, 0)
    rest = await take(broker, 4, prefetch=5)
    assert [d.delivery_count for d in rest] == [1, 1, 1, 1]
    assert [d.message.args[0] for d in [first, *rest]] == list(range(5))


async def test_cancelled_consumer_hands_back_its_batch(broker: SQLiteBroker) -> None:
    echo = echo_actor(broker)
    await echo.send_many([(i,) for i in range(5)])
    got: list[Delivery] = []
    consumer = broker.consume(QUEUE, prefetch=5)
    with anyio.move_on_after(0.3):
        async for d in consumer:
            got.append(d)
            await anyio.sleep_forever()
    await consumer.aclose()
    assert len(got) == 1
    assert await broker.stats(QUEUE) == (4, 0, 1, 0)


async def test_dead_letters_past_ttl_are_deleted_by_the_reaper(path: Path) -> None:
    async with SQLiteBroker(path, dead_letter_ttl=0.3, reaper_interval=0.1) as b:
        echo = echo_actor(b)
        await echo.send(1)
        [d] = await take(b)
        await d.nack("x")
        assert db_rows(path, "SELECT reason FROM taskflow_messages") == [("x",)]

        async def deleted() -> bool:
            return db_rows(path, "SELECT count(*) FROM taskflow_messages") == [(0,)]

        await poll_until(deleted, 5)


async def test_two_brokers_never_share_a_message(path: Path) -> None:
    a, b = SQLiteBroker(path), SQLiteBroker(path)
    echo = echo_actor(a)
    echo_actor(b)
    async with a, b:
        sent = {m.id for m in await echo.send_many([(i,) for i in range(300)])}
        seen: dict[str, list[str]] = {"a": [], "b": []}
        got_one = {"a": anyio.Event(), "b": anyio.Event()}

        async def drain(name: str, broker: SQLiteBroker) -> None:
            other = "b" if name == "a" else "a"
            async for d in broker.consume(QUEUE, prefetch=7):
                seen[name].append(d.message.id)
                got_one[name].set()
                # Both brokers hold claims at once before either settles anything,
                # so the two really compete for the same rows.
                await got_one[other].wait()
                await d.ack()
                if len(seen["a"]) + len(seen["b"]) == len(sent):
                    tg.cancel_scope.cancel()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain, "a", a)
                tg.start_soon(drain, "b", b)
        both = seen["a"] + seen["b"]
        assert len(both) == len(set(both)) == 300 and set(both) == sent
        assert seen["a"] and seen["b"]
        assert await a.stats(QUEUE) == (0, 0, 0, 0)


# -- polling ----------------------------------------------------------------------


async def test_idle_consumer_picks_up_work_fast_and_costs_little_cpu(path: Path) -> None:
    # Commits are not synced to disk here: the pickup latency, not the disk, is under test.
    consumer_broker = SQLiteBroker(path, synchronous="NORMAL")
    producer = SQLiteBroker(path, synchronous="NORMAL")
    echo = echo_actor(producer)
    echo_actor(consumer_broker)
    latencies: list[float] = []
    committed_at = 0.0
    async with consumer_broker, producer:
        received = anyio.Event()

        async def consume() -> None:
            async for d in consumer_broker.consume(QUEUE, prefetch=1):
                # A message may be picked up before its send() returned: count that as 0.
                latencies.append(max(time.monotonic() - committed_at, 0.0))
                await d.ack()
                received.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            # Idle for a second: the consumer backs off to its slowest poll.
            cpu_before = time.process_time()
            await anyio.sleep(1.0)
            idle_cpu = time.process_time() - cpu_before
            for i in range(5):
                received = anyio.Event()
                committed_at = time.monotonic() + 3600  # until the send returns
                await echo.send(i)  # another broker: no in-process wakeup
                committed_at = time.monotonic()
                with anyio.fail_after(5):
                    await received.wait()
                await anyio.sleep(0.3 + random.uniform(0, 0.05))
            # Idle again after work: back to sleeping, not spinning.
            cpu_before = time.process_time()
            await anyio.sleep(1.0)
            idle_cpu_after_work = time.process_time() - cpu_before
            tg.cancel_scope.cancel()
    assert len(latencies) == 5
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 0.5, latencies
    assert idle_cpu < 0.1, idle_cpu
    assert idle_cpu_after_work < 0.1, idle_cpu_after_work


async def test_local_send_wakes_the_consumer_at_once(path: Path) -> None:
    async with SQLiteBroker(path, poll_interval=5.0) as b:
        echo = echo_actor(b)
        got = anyio.Event()

        async def consume() -> None:
            async for d in b.consume(QUEUE):
                await d.ack()
                got.set()
                return

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.2)
            start = time.monotonic()
            await echo.send(1)
            with anyio.fail_after(2):
                await got.wait()
        assert time.monotonic() - start < 0.5  # far below the 5 s poll interval


# -- locking ----------------------------------------------------------------------


async def test_writer_waits_for_a_lock_without_blocking_the_loop(path: Path) -> None:
    async with SQLiteBroker(path, busy_timeout=0.2) as b:
        echo = echo_actor(b)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await anyio.sleep(0.01)
                ticks += 1

        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            async with anyio.create_task_group() as tg:
                tg.start_soon(tick)
                sent = anyio.Event()

                async def send() -> None:
                    await echo.send(1)
                    sent.set()

                tg.start_soon(send)
                await anyio.sleep(0.35)
                assert not sent.is_set() and ticks >= 15
                other.execute("COMMIT")
                with anyio.fail_after(5):
                    await sent.wait()
                tg.cancel_scope.cancel()
        assert (await b.stats(QUEUE)).ready == 1


async def test_writer_gives_up_with_broker_unavailable(path: Path) -> None:
    async with SQLiteBroker(path, busy_timeout=0.1) as b:
        echo = echo_actor(b)
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(BrokerUnavailable), anyio.fail_after(5):
                await echo.send(1)
            other.execute("ROLLBACK")
        await echo.send(2)
        assert (await b.stats(QUEUE)).ready == 1


# -- results ------------------------------------------------------------------------


async def test_results_true_keeps_results_in_the_same_file(path: Path) -> None:
    pytest.importorskip("taskflow.results.sqlite")
    async with SQLiteBroker(path, results=True) as b:

        @b.actor(queue=QUEUE, store_results=True)
        async def add(x: int, y: int) -> int:
            return x + y

        message = await add.send(2, 3)
        async with Worker(b, [QUEUE]):
            assert await message.result(timeout=10) == 5
    assert db_rows(path, "SELECT count(*) FROM taskflow_messages") == [(0,)]


# -- suspects -------------------------------------------------------------------------


async def test_suspect_is_leased_alone_and_holds_back_its_consumer(
    broker: SQLiteBroker, path: Path
) -> None:
    # Given a message whose lease expired twice (its workers died holding it), between two others
    echo = echo_actor(broker)
    first, suspect, last = await echo.send_many([(1,), (2,), (3,)])
    db_rows(path, "UPDATE taskflow_messages SET expiries = 2 WHERE id = ?", (suspect.id,))
    got: list[Delivery] = []
    arrived = anyio.Condition()

    async def consume() -> None:
        async for d in broker.consume(QUEUE, prefetch=10):
            async with arrived:
                got.append(d)
                arrived.notify_all()

    async def wait_for(n: int) -> None:
        with anyio.fail_after(10):
            async with arrived:
                while len(got) < n:
                    await arrived.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        # Then the batch stops before the suspect, and the suspect comes alone
        await wait_for(2)
        assert [d.message.id for d in got] == [first.id, suspect.id]
        assert await broker.stats(QUEUE) == (1, 0, 2, 0)
        # And nothing more is fetched until the suspect is settled
        await anyio.sleep(0.3)
        assert len(got) == 2 and await broker.stats(QUEUE) == (1, 0, 2, 0)
        await got[1].ack()
        await wait_for(3)
        assert got[2].message.id == last.id
        tg.cancel_scope.cancel()


def test_suspect_company_halves_with_each_expiry_and_is_alone_on_its_last_chance() -> None:
    from taskflow.brokers.sqlite._broker import company, pick

    # (expiries, deliveries) -> the most messages it may be leased with, prefetch 16, limit 20
    assert [company(16, e, e, 20) for e in range(7)] == [16, 16, 8, 4, 2, 1, 1]
    assert company(16, 2, 18, 20) == 8 and company(16, 2, 19, 20) == 1
    fresh, suspect = (0, 0), (2, 2)
    rows = [(1, *fresh), (2, *fresh), (3, *suspect), (4, *fresh), (5, *suspect)]
    assert pick(rows, 16, 20) == [1, 2]
    assert pick(rows[2:], 16, 20) == [3, 5]
    many = [(seq, 3, 3) for seq in range(10)]
    assert pick(many, 16, 20) == [0, 1, 2, 3]
    assert pick([(1, 3, 3), (2, 5, 5), (3, 3, 3)], 16, 20) == [1]


async def test_suspects_are_leased_in_groups_that_hold_back_their_consumer(
    broker: SQLiteBroker, path: Path
) -> None:
    # Given 8 messages whose leases expired twice, and a fresh one after them
    echo = echo_actor(broker)
    sent = await echo.send_many([(i,) for i in range(9)])
    db_rows(path, "UPDATE taskflow_messages SET expiries = 2 WHERE id != ?", (sent[-1].id,))
    got: list[Delivery] = []
    arrived = anyio.Condition()

    async def consume() -> None:
        async for d in broker.consume(QUEUE, prefetch=8):
            async with arrived:
                got.append(d)
                arrived.notify_all()

    async def wait_for(n: int) -> None:
        with anyio.fail_after(10):
            async with arrived:
                while len(got) < n:
                    await arrived.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        # Then they come four at a time (half the prefetch), all four at once
        await wait_for(4)
        assert [d.message.id for d in got] == [m.id for m in sent[:4]]
        # And nothing more is fetched until all four are settled
        for d in got[:3]:
            await d.ack()
        await anyio.sleep(0.3)
        assert len(got) == 4 and await broker.stats(QUEUE) == (5, 0, 1, 0)
        await got[3].ack()
        await wait_for(8)
        assert [d.message.id for d in got[4:]] == [m.id for m in sent[4:8]]
        for d in got[4:]:
            await d.ack()
        await wait_for(9)
        tg.cancel_scope.cancel()


async def test_reaper_counts_lease_expiries(path: Path) -> None:
    holder = SQLiteBroker(path, visibility_timeout=0.3, heartbeat_interval=60)
    reaper = SQLiteBroker(path, visibility_timeout=0.3, reaper_interval=0.05)
    async with holder, reaper:
        echo = echo_actor(holder)
        await echo.send(1)
        for expected in (1, 2):
            [d] = await take(holder)

            async def reaped(expected: int = expected) -> bool:
                return db_rows(path, "SELECT expiries FROM taskflow_messages") == [(expected,)]

            await poll_until(reaped, 5)
        [d] = await take(holder)
        assert d.delivery_count == 3
        await d.retry(0)
        assert db_rows(path, "SELECT expiries, deliveries FROM taskflow_messages") == [(0, 0)]


async def test_close_stops_every_thread(path: Path) -> None:
    def ours() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("taskflow-sqlite")]

    before = ours()
    async with SQLiteBroker(path) as b:
        assert sorted(set(ours()) - set(before)) == [
            "taskflow-sqlite-heartbeat",
            "taskflow-sqlite-reaper",
            "taskflow-sqlite-watcher",
        ]
        echo_actor(b)
        await take_after_send(b)
    assert ours() == before


async def take_after_send(broker: SQLiteBroker) -> None:
    await broker.actors["echo"].send(1)
    [d] = await take(broker)
    await d.ack()
