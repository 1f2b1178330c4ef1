"""The result backends (memory, SQLite, Redis) against one set of expectations.

Each test gets two backend objects on the same store (for SQLite two
connections to one file, for Redis two clients) to stand for two processes.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from taskflow.errors import ResultFailed, ResultTimeout
from taskflow.results import ResultBackend, ResultRecord
from taskflow.results.memory import MemoryResults
from taskflow.results.redis import RedisResults
from taskflow.results.sqlite import SQLiteResults

pytestmark = pytest.mark.anyio

Pair = tuple[ResultBackend, ResultBackend]


async def _drop_namespace(url: str, namespace: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{namespace}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    if request.param == "memory":
        one = MemoryResults()
        yield one, one
        return
    if request.param == "sqlite":
        a: ResultBackend = SQLiteResults(tmp_path / "results.sqlite3")
        b: ResultBackend = SQLiteResults(tmp_path / "results.sqlite3")
        try:
            yield a, b
        finally:
            await a.close()
            await b.close()
        return
    url = request.getfixturevalue("redis_url")
    namespace = f"test-results-{uuid.uuid4().hex[:12]}"
    a, b = RedisResults(url, namespace=namespace), RedisResults(url, namespace=namespace)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()
        await _drop_namespace(url, namespace)


def key() -> str:
    return uuid.uuid4().hex


async def test_store_then_fetch(pair: Pair) -> None:
    writer, reader = pair
    k = key()
    await writer.store(k, ResultRecord(ok=True, value={"a": [1, 2]}), 60)
    record = await reader.fetch(k, 0)
    assert record.ok and record.value == {"a": [1, 2]}


async def test_missing_key_times_out_after_the_timeout(pair: Pair) -> None:
    _, reader = pair
    start = time.monotonic()
    with pytest.raises(ResultTimeout):
        await reader.fetch(key(), 0.3)
    assert 0.25 <= time.monotonic() - start < 3
    with pytest.raises(ResultTimeout):
        await reader.fetch(key(), 0)


async def test_waiter_wakes_when_another_writer_stores(pair: Pair) -> None:
    writer, reader = pair
    k = key()
    got: list[ResultRecord] = []
    woke_after: list[float] = []

    async def wait() -> None:
        got.append(await reader.fetch(k, 10))
        woke_after.append(time.monotonic() - stored_at)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.3)  # let the waiter block first
            stored_at = time.monotonic()
            await writer.store(k, ResultRecord(ok=True, value=5), 60)
    assert got[0].value == 5
    assert woke_after[0] < 1.0


async def test_many_waiters_all_wake_on_one_store(pair: Pair) -> None:
    writer, reader = pair
    k = key()
    got: list[Any] = []

    async def wait() -> None:
        got.append((await reader.fetch(k, 10)).value)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(wait)
            await anyio.sleep(0.2)
            await writer.store(k, ResultRecord(ok=True, value="x"), 60)
    assert got == ["x"] * 5


async def test_a_cancelled_wait_leaves_the_backend_usable(pair: Pair) -> None:
    writer, reader = pair
    k = key()
    with anyio.move_on_after(0.2) as scope:
        await reader.fetch(k, None)
    assert scope.cancelled_caught
    await writer.store(k, ResultRecord(ok=True, value="after"), 60)
    assert (await reader.fetch(k, 1)).value == "after"


async def test_store_is_idempotent_and_replaces(pair: Pair) -> None:
    writer, reader = pair
    k = key()
    await writer.store(k, ResultRecord(ok=True, value=1), 60)
    await writer.store(k, ResultRecord(ok=True, value=1), 60)
    await writer.store(k, ResultRecord(ok=False, error_type="E", error="e"), 60)
    record = await reader.fetch(k, 1)
    assert not record.ok
    with pytest.raises(ResultFailed) as info:
        record.raise_for_failure()
    assert info.value.type_name == "E"


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.02)


async def test_records_expire_after_their_ttl(pair: Pair) -> None:
    writer, reader = pair
    k = key()
    await writer.store(k, ResultRecord(ok=True, value=1), 0.3)
    assert (await reader.fetch(k, 0)).value == 1

    async def gone() -> bool:
        try:
            await reader.fetch(k, 0)
        except ResultTimeout:
            return True
        return False

    await eventually(gone)


async def test_incr_is_atomic_across_writers(pair: Pair) -> None:
    a, b = pair
    k = key()
    values: list[int] = []

    async def bump(backend: ResultBackend) -> None:
        values.append(await backend.incr(k, 60))

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(bump, a if i % 2 else b)
    assert sorted(values) == list(range(1, 41))


async def test_claim_is_atomic_across_writers_and_frees_after_its_ttl(pair: Pair) -> None:
    a, b = pair
    k = key()
    held: list[bytes | None] = []

    async def claim(backend: ResultBackend, i: int) -> None:
        held.append(await backend.claim(k, str(i).encode(), 0.3))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(claim, a if i % 2 else b, i)
    winners = [h for h in held if h is None]
    assert len(winners) == 1  # one stored its data, the others got it back
    winner = await a._get(k, 0)
    assert winner is not None and all(h in (None, winner) for h in held)

    async def freed() -> bool:
        await anyio.sleep(0.35)
        return await b.claim(k, b"later", 0.3) is None

    await eventually(freed)


async def test_incr_restarts_after_its_ttl(pair: Pair) -> None:
    a, b = pair
    k = key()
    assert await a.incr(k, 0.2) == 1
    assert await b.incr(k, 0.2) == 2

    async def restarted() -> bool:
        # Each look extends the TTL; only a look after a quiet 0.2 s restarts it.
        await anyio.sleep(0.3)
        return await a.incr(k, 0.2) == 1

    await eventually(restarted)


async def test_add_counts_distinct_members_atomically(pair: Pair) -> None:
    a, b = pair
    k = key()
    sizes: list[int] = []

    async def add(backend: ResultBackend, member: str) -> None:
        sizes.append(await backend.add(k, member, 60))

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(add, a if i % 2 else b, f"m{i % 10}")
    # 10 distinct members, each added 3 times: the size never passes 10 and
    # exactly one call saw each size from 1 to 10.
    assert max(sizes) == 10
    assert sorted(set(sizes)) == list(range(1, 11))
    assert sorted(sizes).count(1) == 1
    assert await a.add(k, "m0", 60) == 10
    assert await b.add(k, "new", 60) == 11


async def test_add_set_expires_after_its_ttl(pair: Pair) -> None:
    a, _ = pair
    k = key()
    assert await a.add(k, "x", 0.2) == 1
    assert await a.add(k, "y", 0.2) == 2

    async def restarted() -> bool:
        await anyio.sleep(0.3)
        return await a.add(k, "z", 0.2) == 1

    await eventually(restarted)


# -- SQLite specifics --------------------------------------------------------------


async def test_sqlite_uses_wal_and_its_own_tables_next_to_the_broker(tmp_path: Path) -> None:
    from taskflow.brokers.sqlite import SQLiteBroker

    path = tmp_path / "shared.sqlite3"
    broker = SQLiteBroker(path, results=True)
    assert isinstance(broker.results, SQLiteResults)

    @broker.actor(store_results=True)
    async def echo(x: int) -> int:
        return x

    async with broker:
        message = await echo.send(1)
        await broker.results.store(message.id, ResultRecord(ok=True, value=1), 60)
        assert await message.result(timeout=1) == 1
    import sqlite3

    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()
    assert {"taskflow_results", "taskflow_results_counters", "taskflow_results_members"} <= tables
    assert "taskflow_messages" in tables


async def test_sqlite_table_name_is_checked_and_used(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SQLiteResults(tmp_path / "x.sqlite3", table="bad name; drop")
    one = SQLiteResults(tmp_path / "x.sqlite3", table="mine")
    other = SQLiteResults(tmp_path / "x.sqlite3")
    try:
        await one.store("k", ResultRecord(ok=True, value=1), 60)
        with pytest.raises(ResultTimeout):
            await other.fetch("k", 0)
        assert (await one.fetch("k", 0)).value == 1
    finally:
        await one.close()
        await other.close()


_WRITER = """
import anyio, sys
from taskflow.results import ResultRecord
from taskflow.results.sqlite import SQLiteResults

async def main():
    backend = SQLiteResults(sys.argv[1])
    await backend.store(sys.argv[2], ResultRecord(ok=True, value="from another process"), 60)
    await backend.close()

anyio.run(main)
"""


async def test_sqlite_waiter_sees_a_result_written_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    reader = SQLiteResults(path, poll_interval=0.05)
    k = key()
    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                got: list[Any] = []

                async def wait() -> None:
                    got.append((await reader.fetch(k, 15)).value)

                tg.start_soon(wait)
                await anyio.to_thread.run_sync(
                    lambda: subprocess.run(
                        [sys.executable, "-c", _WRITER, str(path), k], check=True, timeout=15
                    )
                )
        assert got == ["from another process"]
    finally:
        await reader.close()


async def test_sqlite_polls_with_backoff_not_in_a_tight_loop(tmp_path: Path) -> None:
    reader = SQLiteResults(tmp_path / "results.sqlite3", poll_interval=0.2)
    looks = 0
    original = reader._lookup

    async def counting(k: str) -> bytes | None:
        nonlocal looks
        looks += 1
        return await original(k)

    reader._lookup = counting  # type: ignore[method-assign,assignment]  # count the polls
    try:
        with pytest.raises(ResultTimeout):
            await reader.fetch(key(), 1.0)
    finally:
        await reader.close()
    # 5, 10, 20, 40, 80 ms then every 200 ms: about 10 looks in a second.
    assert 5 <= looks <= 15


async def test_sqlite_errors_become_broker_errors(tmp_path: Path) -> None:
    from taskflow.errors import BrokerUnavailable

    backend = SQLiteResults(tmp_path / "no" / "such" / "dir.sqlite3")
    with pytest.raises(BrokerUnavailable, match="dir.sqlite3"):
        await backend.store("k", ResultRecord(ok=True), 1)


# -- Redis specifics ---------------------------------------------------------------


async def test_redis_waits_by_blocking_not_polling(redis_url: str) -> None:
    namespace = f"test-results-{uuid.uuid4().hex[:12]}"
    reader = RedisResults(redis_url, namespace=namespace)
    calls: dict[str, int] = {"get": 0, "blmove": 0}
    client = reader.client
    real_get, real_blmove = client.get, client.blmove

    def get(*args: Any, **kwargs: Any) -> Any:
        calls["get"] += 1
        return real_get(*args, **kwargs)

    def blmove(*args: Any, **kwargs: Any) -> Any:
        calls["blmove"] += 1
        return real_blmove(*args, **kwargs)

    client.get = get  # type: ignore[method-assign]  # count the round trips
    client.blmove = blmove  # type: ignore[method-assign]
    try:
        start = time.monotonic()
        with pytest.raises(ResultTimeout):
            await reader.fetch(key(), 1.0)
        assert time.monotonic() - start >= 0.9
        assert calls == {"get": 1, "blmove": 1}
    finally:
        await reader.close()
        await _drop_namespace(redis_url, namespace)


async def test_redis_waits_longer_than_the_socket_timeout(redis_url: str) -> None:
    namespace = f"test-results-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(redis_url, socket_timeout=1.0)
    reader = RedisResults(redis_url, namespace=namespace, client=client)
    writer = RedisResults(redis_url, namespace=namespace)
    k = key()
    got: list[Any] = []
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    got.append((await reader.fetch(k, 5)).value)

                tg.start_soon(wait)
                await anyio.sleep(2.5)  # longer than two socket timeouts
                await writer.store(k, ResultRecord(ok=True, value="late"), 60)
        assert got == ["late"]
        with pytest.raises(ResultTimeout):
            await reader.fetch(key(), 1.5)
    finally:
        await client.aclose()
        await writer.close()
        await _drop_namespace(redis_url, namespace)


async def test_redis_keys_are_namespaced_and_expire(redis_url: str) -> None:
    namespace = f"test-results-{uuid.uuid4().hex[:12]}"
    backend = RedisResults(redis_url, namespace=namespace)
    other = RedisResults(redis_url, namespace=namespace + "-other")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await backend.store("k", ResultRecord(ok=True, value=1), 30)
        await backend.incr("c", 30)
        await backend.add("s", "m", 30)
        with pytest.raises(ResultTimeout):
            await other.fetch("k", 0)
        keys = sorted([k.decode() async for k in client.scan_iter(match=f"{namespace}:*")])
        assert keys == [
            f"{namespace}:counter:c",
            f"{namespace}:result:{{k}}",
            f"{namespace}:result:{{k}}:ready",
            f"{namespace}:set:s",
        ]
        for k in keys:
            assert 0 < await client.pttl(k) <= 30_000
        assert "secret" not in repr(RedisResults("redis://:secret@127.0.0.1:6379/15"))
    finally:
        await backend.close()
        await other.close()
        await client.aclose()
        await _drop_namespace(redis_url, namespace)


async def test_redis_errors_become_broker_unavailable() -> None:
    from taskflow.errors import BrokerUnavailable

    backend = RedisResults("redis://127.0.0.1:1/0", retry_timeout=0.5)
    try:
        with pytest.raises(BrokerUnavailable):
            await backend.store("k", ResultRecord(ok=True), 1)
    finally:
        await backend.close()


async def test_redis_bursts_wait_for_a_connection_instead_of_failing(redis_url: str) -> None:
    # Given far more concurrent writes than connections, Expect every write to land.
    backend = RedisResults(redis_url, namespace=f"t-{uuid.uuid4().hex[:8]}", max_connections=4)
    keys = [f"m{i}" for i in range(200)]
    try:

        async def store(key: str) -> None:
            await backend.store(key, ResultRecord(ok=True, value=key), 60)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for key in keys:
                    tg.start_soon(store, key)
        for key in keys:
            assert (await backend.fetch(key, 1)).value == key
    finally:
        await backend.client.delete(*[backend._key(k) for k in keys])
        await backend.client.delete(*[backend._key(k) + ":ready" for k in keys])
        await backend.close()
