"""Connections to the SQLite file: busy retries, group commit, and threads on a fixed rate.

These are the SQLite transport's policies, shared by the broker and its
result store (``_results``): every connection runs in WAL mode with the
broker's ``synchronous`` setting; a busy database is waited for by SQLite's
busy handler, then the whole transaction is retried with backoff; and
writes from the event loop's side go through one :class:`GroupCommit`, so
that everything arriving while a transaction runs shares the next commit
(and its ``fsync``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread

from taskflow._retrying import Outage
from taskflow.brokers.sqlite._clock import FUNCTION
from taskflow.errors import BrokerError, BrokerUnavailable

T = TypeVar("T")

logger = logging.getLogger("taskflow.brokers.sqlite")

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    return "locked" in str(exc) or "busy" in str(exc)


def _cannot_open(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_CANTOPEN


class Database:
    """One sqlite3 connection, used by one thread at a time, with busy retries.

    ``clock``, when given, is registered as the SQL function ``taskflow_now()``.
    SQLite's own busy handler waits up to ``busy_timeout`` for a lock; when it
    gives up, the whole transaction is retried with jittered backoff until
    ``3 * busy_timeout`` has passed, then :class:`BrokerUnavailable` is raised.
    """

    def __init__(
        self,
        path: str,
        busy_timeout: float,
        synchronous: str,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self.clock = clock
        self._outage = Outage(
            logger, "SQLite connection", path, server="SQLite", base=0.005, cap=0.2
        )
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                if self.clock is not None:
                    # Deterministic: read once per statement, like SQLite's own 'now'.
                    conn.create_function(FUNCTION, 0, self.clock, deterministic=True)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` outside an explicit transaction (reads see the last commit)."""
        return self._run(fn, write=False)

    def write(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``fn`` in a ``BEGIN IMMEDIATE`` transaction and commit it.

        ``durable=False`` commits without waiting for the disk even under
        ``synchronous=FULL`` (as ``NORMAL`` does), for changes whose loss to a
        power cut only means a message runs again (acks, claims, lease
        renewals); the next durable commit on the file syncs them too, since
        the write-ahead log is synced as a whole.
        """
        return self._run(fn, write=True, lightly=not durable and self.synchronous == "FULL")

    def _run(
        self, fn: Callable[[sqlite3.Connection], T], *, write: bool, lightly: bool = False
    ) -> T:
        deadline = time.monotonic() + 3 * self.busy_timeout
        with self._lock:
            while True:
                try:
                    result = self._attempt(fn, write, lightly)
                except sqlite3.Error as exc:
                    self._raise_unless_busy(exc)
                    if time.monotonic() >= deadline:
                        raise BrokerUnavailable(
                            f"SQLite database {self.path} stayed locked: {exc}"
                        ) from exc
                    # One policy with the other transports: capped, jittered backoff.
                    time.sleep(self._outage.failed(exc))
                else:
                    self._outage.recovered()
                    return result

    def _raise_unless_busy(self, exc: sqlite3.Error) -> None:
        if _cannot_open(exc):
            raise BrokerUnavailable(f"cannot open SQLite file {self.path}: {exc}") from exc
        if not _is_busy(exc):
            raise BrokerError(f"SQLite error on {self.path}: {exc}") from exc

    def _attempt(self, fn: Callable[[sqlite3.Connection], T], write: bool, lightly: bool) -> T:
        conn = self._connection()
        if not write:
            return fn(conn)
        if lightly:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            if lightly:
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return result

    def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _Op:
    """An operation waiting for the next group commit."""

    __slots__ = ("durable", "error", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], durable: bool) -> None:
        self.fn = fn
        self.durable = durable
        self.error: BaseException | None = None
        self.result: Any = None


class _Batch:
    """Operations committed together in one transaction; ``done`` is set after it."""

    __slots__ = ("done", "ops")

    def __init__(self) -> None:
        self.ops: list[_Op] = []
        self.done = anyio.Event()


class GroupCommit:
    """Runs writes from the event loop in a thread, committing concurrent ones together.

    The first caller while no commit runs becomes the leader: it commits
    every waiting operation in one transaction, again and again until none
    is left. Others wait for their turn. The leader is shielded from
    cancellation so that it never strands the operations of others. Reads
    and single transactions (:meth:`read`, :meth:`write`) share the same
    connection and thread limiter, one statement at a time.

    Create it inside the event loop that uses it.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.limiter = anyio.CapacityLimiter(1)
        self._batch: _Batch | None = None
        self._flushing = False

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` outside a transaction, in the connection's thread."""
        return await anyio.to_thread.run_sync(self.db.read, fn, limiter=self.limiter)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction of its own, in the connection's thread."""
        return await anyio.to_thread.run_sync(self.db.write, fn, limiter=self.limiter)

    async def commit(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``fn`` in the next group commit and return what it returned.

        A commit waits for the disk (under ``synchronous=FULL``) when any of
        its operations is ``durable``; see :meth:`Database.write`.

        Raises:
            BrokerError: The transaction failed (every operation in it fails alike).
        """
        op = _Op(fn, durable)
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
        batch.ops.append(op)
        if self._flushing:
            await batch.done.wait()
        else:
            self._flushing = True
            try:
                with anyio.CancelScope(shield=True):
                    while self._batch is not None:
                        current, self._batch = self._batch, None
                        await self._flush(current)
            finally:
                self._flushing = False
        if op.error is not None:
            raise op.error
        return cast(T, op.result)

    async def _flush(self, batch: _Batch) -> None:
        def run(conn: sqlite3.Connection) -> None:
            for op in batch.ops:
                op.result = op.fn(conn)

        durable = any(op.durable for op in batch.ops)
        try:
            await anyio.to_thread.run_sync(
                partial(self.db.write, run, durable=durable), limiter=self.limiter
            )
        except BaseException as exc:
            for op in batch.ops:
                op.error = exc
        finally:
            batch.done.set()

    async def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        await anyio.to_thread.run_sync(self.db.close, limiter=self.limiter)


class Ticker:
    """A daemon thread calling ``fn`` every ``interval`` seconds until stopped."""

    def __init__(self, name: str, interval: float, fn: Callable[[], None], db: Database) -> None:
        self.interval = interval
        self._fn = fn
        self._db = db
        self._outage = Outage(logger, name, db.path, server="SQLite")
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        due = time.monotonic() + self.interval
        try:
            while not self._stopped.wait(max(due - time.monotonic(), 0.0)):
                # Fixed rate rather than fixed delay, so a slow tick does not shift the rest.
                due = max(due + self.interval, time.monotonic())
                try:
                    self._fn()
                except Exception as exc:
                    # Said once per outage; the fixed rate already paces the attempts.
                    self._outage.failed(exc)
                else:
                    self._outage.recovered()
        finally:
            self._db.close()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
