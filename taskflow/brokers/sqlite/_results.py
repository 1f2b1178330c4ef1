"""Results in a SQLite file: the ``SQLiteBroker``'s ``results=True``.

The backend keeps its own tables (``<table>``, ``<table>_counters`` and
``<table>_members``) and can share the broker's file. It runs on the
transport's own connection code (``_database``), so it keeps the broker's
policies: WAL mode and the broker's ``synchronous`` setting on every
connection; a busy database waited for by SQLite's busy handler and then
retried with backoff up to ``3 * busy_timeout`` before
:class:`~taskflow.BrokerUnavailable`; writes that arrive together committed
together (one ``fsync`` for a burst of results under ``synchronous=FULL``);
and every expiry judged by SQLite's clock inside the statement, as the
broker judges leases and delays, so every process on the host agrees on
when a result is gone.

SQLite cannot push a notification to another process, so a waiter polls
the row with a backoff (from 5 ms up to ``poll_interval``); a result written
by the same process wakes its waiters at once.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Literal

import anyio

from taskflow.brokers.sqlite._database import Database, GroupCommit
from taskflow.brokers.sqlite._sql import WALL_NOW as NOW
from taskflow.results import ResultBackend

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SWEEP_INTERVAL = 60.0


def _schema(t: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS {t} (
            key TEXT PRIMARY KEY, data BLOB NOT NULL, expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        f"CREATE INDEX IF NOT EXISTS {t}_expiry ON {t} (expires_at)",
        f"""CREATE TABLE IF NOT EXISTS {t}_counters (
            key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        f"""CREATE TABLE IF NOT EXISTS {t}_members (
            key TEXT NOT NULL, member TEXT NOT NULL, expires_at REAL NOT NULL,
            PRIMARY KEY (key, member)
        ) WITHOUT ROWID""",
    ]


class _Statements:
    """The SQL of one results table, built once."""

    def __init__(self, t: str) -> None:
        self.schema = _schema(t)
        self.put = (
            f"INSERT INTO {t} (key, data, expires_at) VALUES (?, ?, {NOW} + ?) "
            "ON CONFLICT (key) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at"
        )
        self.get = f"SELECT data FROM {t} WHERE key = ? AND expires_at >= {NOW}"
        self.claim = [
            f"DELETE FROM {t} WHERE key = :key AND expires_at < {NOW}",
            f"INSERT OR IGNORE INTO {t} (key, data, expires_at) VALUES (:key, :data, {NOW} + :ttl)",
        ]
        self.incr = (
            f"INSERT INTO {t}_counters (key, value, expires_at) VALUES (?, 1, {NOW} + ?) "
            f"ON CONFLICT (key) DO UPDATE SET value = CASE WHEN expires_at < {NOW} THEN 1 "
            "ELSE value + 1 END, expires_at = excluded.expires_at RETURNING value"
        )
        self.add = [
            f"DELETE FROM {t}_members WHERE key = :key AND expires_at < {NOW}",
            f"INSERT OR IGNORE INTO {t}_members (key, member, expires_at) "
            f"VALUES (:key, :member, {NOW} + :ttl)",
            f"UPDATE {t}_members SET expires_at = {NOW} + :ttl WHERE key = :key",
        ]
        self.size = f"SELECT COUNT(*) FROM {t}_members WHERE key = ?"
        self.sweep = [
            f"DELETE FROM {table} WHERE expires_at < {NOW}"
            for table in (t, f"{t}_counters", f"{t}_members")
        ]


class SQLiteResults(ResultBackend):
    """Result backend in a SQLite file.

    Args:
        path: The database file (created if missing); may be the broker's own file.
        table: Name of the results table; the counters and sets use it as a prefix.
        poll_interval: Longest pause between two looks while waiting for a
            result written by another process, in seconds.
        busy_timeout: Seconds SQLite waits for another writer's lock before
            the transaction is retried (up to three times as long in all).
        synchronous: SQLite's ``synchronous`` pragma, as for
            :class:`~taskflow.brokers.sqlite.SQLiteBroker` (``results=True``
            takes the broker's).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        table: str = "taskflow_results",
        poll_interval: float = 0.2,
        busy_timeout: float = 10.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if not _TABLE.match(table):
            raise ValueError(f"invalid table name {table!r}")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self.path = Path(path)
        self.table = table
        self.poll_interval = poll_interval
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self._sql = _Statements(table)
        self._db = Database(str(self.path), busy_timeout, synchronous)
        self._conn: GroupCommit | None = None
        self._open_lock: anyio.Lock | None = None
        self._local: dict[str, anyio.Event] = {}
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f"SQLiteResults({str(self.path)!r}, table={self.table!r})"

    # -- connection -----------------------------------------------------------

    async def _connection(self) -> GroupCommit:
        """The connection, opened (and the tables created) on first use."""
        if self._conn is not None:
            return self._conn
        if self._open_lock is None:
            self._open_lock = anyio.Lock()
        async with self._open_lock:
            if self._conn is None:
                conn = GroupCommit(self._db)
                await conn.write(self._create)
                self._conn = conn
        return self._conn

    def _create(self, db: sqlite3.Connection) -> None:
        for statement in self._sql.schema:
            db.execute(statement)

    async def close(self) -> None:
        """Close the connection; the next call opens it again."""
        conn, self._conn = self._conn, None
        self._open_lock = None
        if conn is not None:
            await conn.close()

    def _forget_connections(self) -> None:
        self._db = Database(str(self.path), self.busy_timeout, self.synchronous)
        self._conn = None
        self._open_lock = None
        self._local = {}

    # -- hooks ----------------------------------------------------------------

    async def _put(self, key: str, data: bytes, ttl: float) -> None:
        sweep = time.monotonic() >= self._next_sweep
        if sweep:
            self._next_sweep = time.monotonic() + _SWEEP_INTERVAL

        def put(db: sqlite3.Connection) -> None:
            db.execute(self._sql.put, (key, data, ttl))
            if sweep:  # expired rows go at most once a minute per process
                for statement in self._sql.sweep:
                    db.execute(statement)

        conn = await self._connection()
        await conn.commit(put)
        event = self._local.pop(key, None)
        if event is not None:
            event.set()

    async def _lookup(self, key: str) -> bytes | None:
        def get(db: sqlite3.Connection) -> bytes | None:
            row = db.execute(self._sql.get, (key,)).fetchone()
            return None if row is None else bytes(row[0])

        conn = await self._connection()
        return await conn.read(get)

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

    async def _claim(self, key: str, data: bytes, ttl: float) -> bytes | None:
        params = {"key": key, "data": data, "ttl": ttl}

        def claim(db: sqlite3.Connection) -> bytes | None:
            for statement in self._sql.claim:
                db.execute(statement, params)
            row = db.execute(self._sql.get, (key,)).fetchone()
            held = bytes(row[0])
            return None if held == data else held

        conn = await self._connection()
        return await conn.commit(claim)

    async def _incr(self, key: str, ttl: float) -> int:
        def incr(db: sqlite3.Connection) -> int:
            return int(db.execute(self._sql.incr, (key, ttl)).fetchone()[0])

        conn = await self._connection()
        return await conn.commit(incr)

    async def _add(self, key: str, member: str, ttl: float) -> int:
        params = {"key": key, "member": member, "ttl": ttl}

        def add(db: sqlite3.Connection) -> int:
            for statement in self._sql.add:
                db.execute(statement, params)
            return int(db.execute(self._sql.size, (key,)).fetchone()[0])

        conn = await self._connection()
        return await conn.commit(add)
