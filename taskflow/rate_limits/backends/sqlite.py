"""Rate-limit state in a SQLite file, which may be the ``SQLiteBroker``'s own.

Tables (prefix ``table``): ``<t>_holders`` (a row per slot holder or window
event, with its expiry), ``<t>_buckets`` (the current fixed bucket and its
count per key) and ``<t>_barriers``. Each operation is one ``BEGIN
IMMEDIATE`` transaction, so several processes on one host never both take
the last slot; times are read by SQLite inside the transaction.

Calls run in a thread (``anyio.to_thread``) for async callers and directly
for sync ones, one at a time on one connection; async operations started
together share one transaction (``_batch``). Waiting on a barrier polls
the row with a backoff from 5 ms up to ``poll_interval``.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from taskflow.errors import BrokerError, BrokerUnavailable
from taskflow.rate_limits.backends import LINE_TTL, Full, RateLimitBackend
from taskflow.rate_limits.backends._batch import Coalescer

if TYPE_CHECKING:
    from taskflow.broker import Broker

T = TypeVar("T")
Step = Callable[[sqlite3.Connection, float], Any]
Check = Callable[[sqlite3.Connection, float], Full | None]

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
_NOW = "(julianday('now') - 2440587.5) * 86400.0"


def _unknown(full: Full | None) -> Full | None:
    """A concurrent slot's ``retry_after`` is unknown: when a holder finishes."""
    return None if full is None else full._replace(retry_after=0.0)


class SQLiteBackend(RateLimitBackend):
    """Rate-limit state in a SQLite file, shared by every process on the host.

    Args:
        path: The database file, or a ``SQLiteBroker`` to share its file.
        table: Prefix of the backend's tables.
        busy_timeout: Seconds a transaction waits for another writer.
        poll_interval: Longest pause between two looks at a barrier, in seconds.
    """

    def __init__(
        self,
        path: str | Path | Broker,
        *,
        table: str = "taskflow_rate",
        busy_timeout: float = 10.0,
        poll_interval: float = 0.1,
    ) -> None:
        if not _TABLE.match(table):
            raise ValueError(f"invalid table name {table!r}")
        if not isinstance(path, str | Path):
            broker_path = getattr(path, "path", None)
            if not isinstance(broker_path, str):
                raise TypeError(f"SQLiteBackend needs a path or a SQLiteBroker, not {path!r}")
            path = broker_path
        self.path = Path(path)
        self.table = table
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._batch: Coalescer[Step] = Coalescer(self._flush)

    def __repr__(self) -> str:
        return f"SQLiteBackend({str(self.path)!r}, table={self.table!r})"

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
                CREATE TABLE IF NOT EXISTS {t}_holders (
                    key TEXT NOT NULL, holder TEXT NOT NULL, expires_at REAL NOT NULL,
                    PRIMARY KEY (key, holder)
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS {t}_buckets (
                    key TEXT PRIMARY KEY, bucket INTEGER NOT NULL, count INTEGER NOT NULL
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS {t}_line (
                    key TEXT NOT NULL, waiter TEXT NOT NULL, since REAL NOT NULL,
                    PRIMARY KEY (key, waiter)
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS {t}_barriers (
                    key TEXT PRIMARY KEY, parties INTEGER NOT NULL, arrived INTEGER NOT NULL,
                    expires_at REAL NOT NULL
                ) WITHOUT ROWID;
                """
            )
        except BaseException:
            db.close()
            raise
        return db

    def _transaction(self, fn: Callable[[sqlite3.Connection, float], T]) -> T:
        """Run ``fn(db, now)`` in one ``BEGIN IMMEDIATE`` transaction, blocking.

        Raises:
            BrokerUnavailable: SQLite could not run it (locked too long, no such directory).
            BrokerError: Any other SQLite error.
        """
        with self._lock:
            try:
                if self._db is None:
                    self._db = self._open()
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    (now,) = db.execute(f"SELECT {_NOW}").fetchone()
                    result = fn(db, float(now))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.OperationalError as exc:
                raise BrokerUnavailable(f"rate limits in {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise BrokerError(f"rate limits in {self.path}: {exc}") from exc

    async def _run(self, fn: Callable[[sqlite3.Connection, float], T]) -> T:
        result: T = await self._batch.submit(fn)
        return result

    async def _flush(self, fns: list[Step]) -> list[Any]:
        def steps(db: sqlite3.Connection, now: float) -> list[Any]:
            return [fn(db, now) for fn in fns]

        return await anyio.to_thread.run_sync(self._transaction, steps)

    async def close(self) -> None:
        """Close the connection; the next operation opens it again."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    # -- the line of waiters ---------------------------------------------------

    def _line(
        self,
        db: sqlite3.Connection,
        now: float,
        key: str,
        waiter: str | None,
        full: bool,
        retry_after: float,
    ) -> Full | None:
        """In the transaction: leave the line on room, join it (or find one's place) when full."""
        t = self.table
        if waiter is None:
            return Full(retry_after, 0) if full else None
        if not full:
            db.execute(f"DELETE FROM {t}_line WHERE key = ? AND waiter = ?", (key, waiter))
            return None
        db.execute(f"DELETE FROM {t}_line WHERE key = ? AND since <= ?", (key, now - LINE_TTL))
        db.execute(f"INSERT OR IGNORE INTO {t}_line VALUES (?, ?, ?)", (key, waiter, now))
        (ahead,) = db.execute(
            f"SELECT COUNT(*) FROM {t}_line AS o, {t}_line AS me "
            "WHERE me.key = ? AND me.waiter = ? AND o.key = me.key "
            "AND (o.since < me.since OR (o.since = me.since AND o.waiter < me.waiter))",
            (key, waiter),
        ).fetchone()
        return Full(retry_after, int(ahead))

    # -- concurrent and window ------------------------------------------------

    def _take(self, key: str, holder: str, limit: int, ttl: float, waiter: str | None) -> Check:
        t = self.table

        def take(db: sqlite3.Connection, now: float) -> Full | None:
            db.execute(f"DELETE FROM {t}_holders WHERE key = ? AND expires_at <= ?", (key, now))
            rows = db.execute(
                f"SELECT COUNT(*), MIN(expires_at) FROM {t}_holders WHERE key = ? AND holder != ?",
                (key, holder),
            ).fetchone()
            count, earliest = int(rows[0]), rows[1]
            full = count >= limit
            if not full:
                db.execute(
                    f"INSERT OR REPLACE INTO {t}_holders (key, holder, expires_at) "
                    "VALUES (?, ?, ?)",
                    (key, holder, now + ttl),
                )
            retry_after = max(float(earliest) - now, 0.0) if full and earliest is not None else 0.0
            return self._line(db, now, key, waiter, full, retry_after)

        return take

    def hold_sync(
        self, key: str, holder: str, limit: int, ttl: float, waiter: str | None = None
    ) -> Full | None:
        """Take a slot; see :meth:`RateLimitBackend.hold`."""
        return _unknown(self._transaction(self._take(f"c:{key}", holder, limit, ttl, waiter)))

    async def hold(
        self, key: str, holder: str, limit: int, ttl: float, waiter: str | None = None
    ) -> Full | None:
        """Take a slot; see :meth:`RateLimitBackend.hold`."""
        return _unknown(await self._run(self._take(f"c:{key}", holder, limit, ttl, waiter)))

    def _drop(self, key: str, holder: str) -> Step:
        t = self.table

        def drop(db: sqlite3.Connection, now: float) -> None:
            db.execute(f"DELETE FROM {t}_holders WHERE key = ? AND holder = ?", (key, holder))

        return drop

    def release_sync(self, key: str, holder: str) -> None:
        """Give a slot back; see :meth:`RateLimitBackend.release`."""
        self._transaction(self._drop(f"c:{key}", holder))

    async def release(self, key: str, holder: str) -> None:
        """Give a slot back; see :meth:`RateLimitBackend.release`."""
        await self._run(self._drop(f"c:{key}", holder))

    def hit_window_sync(
        self, key: str, holder: str, limit: int, window: float, waiter: str | None = None
    ) -> Full | None:
        """Record an event in a sliding window; see :meth:`RateLimitBackend.hit_window`."""
        return self._transaction(self._take(f"w:{key}", holder, limit, window, waiter))

    async def hit_window(
        self, key: str, holder: str, limit: int, window: float, waiter: str | None = None
    ) -> Full | None:
        """Record an event in a sliding window; see :meth:`RateLimitBackend.hit_window`."""
        return await self._run(self._take(f"w:{key}", holder, limit, window, waiter))

    # -- bucket ---------------------------------------------------------------

    def _count(self, key: str, limit: int, bucket: float, waiter: str | None) -> Check:
        t = self.table

        def count(db: sqlite3.Connection, now: float) -> Full | None:
            current = int(now // bucket)
            row = db.execute(f"SELECT bucket, count FROM {t}_buckets WHERE key = ?", (key,))
            found = row.fetchone()
            used = int(found[1]) if found is not None and int(found[0]) == current else 0
            full = used >= limit
            if not full:
                db.execute(
                    f"INSERT OR REPLACE INTO {t}_buckets (key, bucket, count) VALUES (?, ?, ?)",
                    (key, current, used + 1),
                )
            retry_after = (current + 1) * bucket - now if full else 0.0
            return self._line(db, now, f"b:{key}", waiter, full, retry_after)

        return count

    def hit_bucket_sync(
        self, key: str, limit: int, bucket: float, waiter: str | None = None
    ) -> Full | None:
        """Count an event in a fixed bucket; see :meth:`RateLimitBackend.hit_bucket`."""
        return self._transaction(self._count(key, limit, bucket, waiter))

    async def hit_bucket(
        self, key: str, limit: int, bucket: float, waiter: str | None = None
    ) -> Full | None:
        """Count an event in a fixed bucket; see :meth:`RateLimitBackend.hit_bucket`."""
        return await self._run(self._count(key, limit, bucket, waiter))

    # -- barrier --------------------------------------------------------------

    async def barrier_create(self, key: str, parties: int, ttl: float) -> bool:
        """Create a barrier; see :meth:`RateLimitBackend.barrier_create`."""
        t = self.table

        def create(db: sqlite3.Connection, now: float) -> bool:
            db.execute(f"DELETE FROM {t}_barriers WHERE key = ? AND expires_at <= ?", (key, now))
            cursor = db.execute(
                f"INSERT OR IGNORE INTO {t}_barriers (key, parties, arrived, expires_at) "
                "VALUES (?, ?, 0, ?)",
                (key, parties, now + ttl),
            )
            return cursor.rowcount == 1

        return await self._run(create)

    async def barrier_arrive(self, key: str) -> bool:
        """Count a party in; see :meth:`RateLimitBackend.barrier_arrive`."""
        t = self.table

        def arrive(db: sqlite3.Connection, now: float) -> Any:
            return db.execute(
                f"UPDATE {t}_barriers SET arrived = arrived + 1 "
                "WHERE key = ? AND expires_at > ? RETURNING arrived >= parties",
                (key, now),
            ).fetchone()

        row = await self._run(arrive)
        if row is None:
            raise LookupError(f"no barrier {key!r}")
        return bool(row[0])

    async def _released(self, key: str) -> bool | None:
        t = self.table

        def look(db: sqlite3.Connection, now: float) -> Any:
            return db.execute(
                f"SELECT arrived >= parties FROM {t}_barriers WHERE key = ? AND expires_at > ?",
                (key, now),
            ).fetchone()

        row = await self._run(look)
        return None if row is None else bool(row[0])

    async def barrier_wait(self, key: str, timeout: float) -> bool:
        """Wait for a release; see :meth:`RateLimitBackend.barrier_wait`."""
        pause = 0.005
        with anyio.move_on_after(timeout):
            while True:
                released = await self._released(key)
                if released is not False:
                    return bool(released)
                await anyio.sleep(pause)
                pause = min(pause * 2, self.poll_interval)
        return bool(await self._released(key))
