"""Results in a SQLite file: the ``SQLiteBroker``'s ``results=True``.

The backend keeps its own tables (``<table>``, ``<table>_counters`` and
``<table>_members``) and can share the broker's file. All calls go through
the standard library's ``sqlite3`` in a worker thread, never on the event
loop. The database runs in WAL mode, so readers never block the writer and
several processes on one host can share it.

SQLite cannot push a notification to another process, so a waiter polls
the row with a backoff (from 5 ms up to ``poll_interval``); a result written
by the same process wakes its waiters at once.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio

from taskflow.errors import BrokerError, BrokerUnavailable
from taskflow.results import ResultBackend

T = TypeVar("T")

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SWEEP_INTERVAL = 60.0


class SQLiteResults(ResultBackend):
    """Result backend in a SQLite file.

    Args:
        path: The database file (created if missing); may be the broker's own file.
        table: Name of the results table; the counters and sets use it as a prefix.
        poll_interval: Longest pause between two looks while waiting for a
            result written by another process, in seconds.
        busy_timeout: Seconds a statement waits for another writer's lock.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        table: str = "taskflow_results",
        poll_interval: float = 0.2,
        busy_timeout: float = 10.0,
    ) -> None:
        if not _TABLE.match(table):
            raise ValueError(f"invalid table name {table!r}")
        self.path = Path(path)
        self.table = table
        self.poll_interval = poll_interval
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._lock: anyio.Lock | None = None
        self._local: dict[str, anyio.Event] = {}
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f"SQLiteResults({str(self.path)!r}, table={self.table!r})"

    # -- connection -----------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            t = self.table
            db.executescript(
                f"""
                CREATE TABLE IF NOT EXISTS {t} (
                    key TEXT PRIMARY KEY, data BLOB NOT NULL, expires_at REAL NOT NULL
                ) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS {t}_expiry ON {t} (expires_at);
                CREATE TABLE IF NOT EXISTS {t}_counters (
                    key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS {t}_members (
                    key TEXT NOT NULL, member TEXT NOT NULL, expires_at REAL NOT NULL,
                    PRIMARY KEY (key, member)
                ) WITHOUT ROWID;
                """
            )
        except BaseException:
            db.close()
            raise
        return db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` with the connection in a thread, one call at a time.

        Raises:
            BrokerUnavailable: SQLite could not run it (locked too long, no such directory).
            BrokerError: Any other SQLite error.
        """
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            try:
                if self._db is None:
                    self._db = await anyio.to_thread.run_sync(self._open)
                return await anyio.to_thread.run_sync(fn, self._db)
            except sqlite3.OperationalError as exc:  # locked, busy, unreadable file
                raise BrokerUnavailable(f"results in {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise BrokerError(f"results in {self.path}: {exc}") from exc

    async def close(self) -> None:
        """Close the connection; the next call opens it again."""
        if self._db is not None:
            db, self._db = self._db, None
            await anyio.to_thread.run_sync(db.close)

    # -- hooks ----------------------------------------------------------------

    async def _put(self, key: str, data: bytes, ttl: float) -> None:
        t = self.table

        def put(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute(
                f"INSERT INTO {t} (key, data, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET data = excluded.data, "
                "expires_at = excluded.expires_at",
                (key, data, now + ttl),
            )
            self._sweep(db, now)

        await self._run(put)
        event = self._local.pop(key, None)
        if event is not None:
            event.set()

    def _sweep(self, db: sqlite3.Connection, now: float) -> None:
        """Delete expired rows, at most once a minute per process."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL
        for table in (self.table, f"{self.table}_counters", f"{self.table}_members"):
            db.execute(f"DELETE FROM {table} WHERE expires_at < ?", (now,))

    async def _lookup(self, key: str) -> bytes | None:
        t = self.table

        def get(db: sqlite3.Connection) -> bytes | None:
            row = db.execute(
                f"SELECT data FROM {t} WHERE key = ? AND expires_at >= ?", (key, time.time())
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(get)

    async def _get(self, key: str, timeout: float | None) -> bytes | None:
        data = await self._lookup(key)
        if data is not None or (timeout is not None and timeout <= 0):
            return data
        pause = 0.005
        with anyio.move_on_after(timeout):
            while data is None:
                event = self._local.setdefault(key, anyio.Event())
                with anyio.move_on_after(pause):
                    await event.wait()
                pause = min(pause * 2, self.poll_interval)
                data = await self._lookup(key)
            return data
        return await self._lookup(key)

    async def _incr(self, key: str, ttl: float) -> int:
        t = self.table

        def incr(db: sqlite3.Connection) -> int:
            now = time.time()
            row = db.execute(
                f"INSERT INTO {t}_counters (key, value, expires_at) VALUES (?, 1, ?) "
                "ON CONFLICT (key) DO UPDATE SET "
                "value = CASE WHEN expires_at < ? THEN 1 ELSE value + 1 END, "
                "expires_at = excluded.expires_at RETURNING value",
                (key, now + ttl, now),
            ).fetchone()
            return int(row[0])

        return await self._run(incr)

    async def _add(self, key: str, member: str, ttl: float) -> int:
        t = self.table

        def add(db: sqlite3.Connection) -> int:
            now = time.time()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(f"DELETE FROM {t}_members WHERE key = ? AND expires_at < ?", (key, now))
                db.execute(
                    f"INSERT OR IGNORE INTO {t}_members (key, member, expires_at) VALUES (?, ?, ?)",
                    (key, member, now + ttl),
                )
                db.execute(f"UPDATE {t}_members SET expires_at = ? WHERE key = ?", (now + ttl, key))
                (size,) = db.execute(
                    f"SELECT COUNT(*) FROM {t}_members WHERE key = ?", (key,)
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(size)

        return await self._run(add)
