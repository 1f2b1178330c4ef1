"""SQLiteResults on the SQLite transport's own connection code and policies.

The broker's ``synchronous`` setting and busy policy reach the result store,
expiry is judged by SQLite's clock, and concurrent writes share commits.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import anyio
import pytest

from taskflow import BrokerUnavailable, ResultTimeout
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.results import ResultRecord, SQLiteResults

pytestmark = pytest.mark.anyio

ONE = ResultRecord(ok=True, value=1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "results.sqlite3"


@contextmanager
def write_lock_held(path: Path, seconds: float) -> Iterator[None]:
    """Hold the file's write lock from another connection for ``seconds``, in a thread."""
    taken = threading.Event()

    def hold() -> None:
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(seconds)
            other.execute("ROLLBACK")

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(5)
    try:
        yield
    finally:
        thread.join(10)


def synchronous_pragma(backend: SQLiteResults) -> int:
    conn = backend._db._connection()
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


@pytest.mark.parametrize(("setting", "level"), [("FULL", 2), ("NORMAL", 1)])
async def test_results_true_takes_the_brokers_synchronous_setting(
    path: Path, setting: str, level: int
) -> None:
    broker = SQLiteBroker(path, results=True, synchronous=setting, busy_timeout=3.0)  # type: ignore[arg-type]
    backend = broker.results
    assert isinstance(backend, SQLiteResults)
    assert (backend.synchronous, backend.busy_timeout) == (setting, 3.0)
    async with broker:
        await backend.store("k", ONE, 60)
        assert synchronous_pragma(backend) == level
        assert (await backend.fetch("k", 0)).value == 1


async def test_a_standalone_store_syncs_every_commit_by_default(path: Path) -> None:
    backend = SQLiteResults(path)
    try:
        await backend.store("k", ONE, 60)
        assert synchronous_pragma(backend) == 2
    finally:
        await backend.close()
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteResults(path, synchronous="OFF")  # type: ignore[arg-type]


async def test_expiry_is_judged_by_sqlites_clock_not_the_writers(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SQLiteResults(path)
    real = time.time
    try:
        # Given a writer whose Python clock is an hour behind
        monkeypatch.setattr(time, "time", lambda: real() - 3600)
        await backend.store("behind", ONE, 60)
        assert await backend.incr("count", 60) == 1
        # When a reader's clock is an hour ahead
        monkeypatch.setattr(time, "time", lambda: real() + 3600)
        # Then the result and the counter still live for their TTL by SQLite's clock
        assert (await backend.fetch("behind", 0)).value == 1
        assert await backend.incr("count", 60) == 2
        assert await backend.add("set", "a", 60) == 1
        assert await backend.add("set", "b", 60) == 2
        # And a short TTL still ends, by the same clock
        await backend.store("short", ONE, 0.05)
        with anyio.fail_after(5):
            while await backend._lookup("short") is not None:
                await anyio.sleep(0.01)
        with pytest.raises(ResultTimeout):
            await backend.fetch("short", 0)
    finally:
        await backend.close()


async def test_a_busy_file_is_retried_after_sqlites_busy_handler_gives_up(path: Path) -> None:
    backend = SQLiteResults(path, busy_timeout=0.2)
    try:
        await backend.store("warm", ONE, 60)
        # Given another process holding the write lock for twice the busy timeout
        with write_lock_held(path, 0.4):
            started = time.monotonic()
            # Then a store waits it out instead of failing when SQLite's handler does
            await backend.store("k", ONE, 60)
            assert await backend.incr("n", 60) == 1
            assert time.monotonic() - started >= 0.3
        assert (await backend.fetch("k", 0)).value == 1
        # And a lock held past three busy timeouts fails loudly, in bounded time
        with write_lock_held(path, 1.5):
            with pytest.raises(BrokerUnavailable, match="locked"), anyio.fail_after(5):
                await backend.store("late", ONE, 60)
    finally:
        await backend.close()


async def test_concurrent_writes_share_commits(path: Path) -> None:
    backend = SQLiteResults(path)
    try:
        await backend.store("warm", ONE, 60)
        begins: list[str] = []
        backend._db._connection().set_trace_callback(
            lambda s: begins.append(s) if s.startswith("BEGIN") else None
        )
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(backend.store, f"k{i}", ResultRecord(ok=True, value=i), 60)
        assert 1 <= len(begins) <= 3, begins
        for i in range(50):
            assert (await backend.fetch(f"k{i}", 0)).value == i
    finally:
        await backend.close()
