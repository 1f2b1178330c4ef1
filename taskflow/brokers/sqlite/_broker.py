"""SQLiteBroker and its receipts (see the package docstring for the design)."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar
from urllib.parse import parse_qsl, urlsplit

import anyio

from taskflow._inspection import BrowseRecord, State
from taskflow._transport import DeadRecord, Envelope, QueueStats, Receipt
from taskflow.broker import Broker
from taskflow.brokers.sqlite import _inspect
from taskflow.brokers.sqlite import _sql as sql
from taskflow.brokers.sqlite._clock import HostClock
from taskflow.brokers.sqlite._database import Database, GroupCommit, Ticker
from taskflow.brokers.sqlite._watcher import Watcher
from taskflow.errors import LeaseLost

if TYPE_CHECKING:
    from taskflow.results import ResultBackend

T = TypeVar("T")

logger = logging.getLogger("taskflow.brokers.sqlite")

_URL_FLOATS = frozenset(
    {
        "visibility_timeout",
        "heartbeat_interval",
        "reaper_interval",
        "poll_interval",
        "busy_timeout",
        "dead_letter_ttl",
    }
)
_URL_INTS = frozenset({"max_deliveries", "max_message_size"})

#: A message whose lease expired this many times (its worker died or stalled
#: while holding it, twice) is a suspect: it may be what kills workers.
#: Suspects are leased in groups of suspects only, and their consumer fetches
#: nothing more until the whole group is settled, so that a worker-killing
#: message takes no fresh message down with it. A group may be as large as
#: half the prefetch at this many expiries, and halves with each further
#: expiry of its members (see :func:`company`), so a repeat offender is run
#: alone within log2(prefetch) more crashes while innocent suspects still run
#: side by side rather than one at a time.
SUSPECT_EXPIRIES = 2


def company(limit: int, expiries: int, deliveries: int, max_deliveries: int) -> int:
    """How many messages, itself included, a message may be leased with.

    Unbounded (``limit``) until it is a suspect; then ``limit`` halved once
    for every expiry from :data:`SUSPECT_EXPIRIES` on. A message about to get
    its last delivery before ``max_deliveries`` is always leased alone, so
    that an innocent never spends its last chance beside a killer.
    """
    if expiries < SUSPECT_EXPIRIES:
        return limit
    if deliveries + 1 >= max_deliveries:
        return 1
    return max(1, limit >> (expiries - SUSPECT_EXPIRIES + 1))


def pick(candidates: Sequence[tuple[int, int, int]], limit: int, max_deliveries: int) -> list[int]:
    """Choose the seqs to lease from ``(seq, expiries, deliveries)`` rows, best first.

    A batch is either fresh messages up to the first suspect, or suspects
    only, as many as the most restricted of them allows.
    """
    if not candidates:
        return []
    if candidates[0][1] < SUSPECT_EXPIRIES:
        fresh = []
        for seq, expiries, _ in candidates:
            if expiries >= SUSPECT_EXPIRIES:
                break
            fresh.append(seq)
        return fresh
    group: list[int] = []
    size = limit
    for seq, expiries, deliveries in candidates:
        if expiries < SUSPECT_EXPIRIES:
            continue
        size = min(size, company(limit, expiries, deliveries, max_deliveries))
        if len(group) >= size:
            break
        group.append(seq)
    return group


class _Quarantine:
    """The suspects leased together; their consumer waits until all are settled."""

    __slots__ = ("pending", "settled")

    def __init__(self, pending: int) -> None:
        self.pending = pending
        self.settled = anyio.Event()

    def release(self) -> None:
        self.pending -= 1
        if self.pending <= 0:
            self.settled.set()


class SQLiteBroker(Broker):
    """A broker on one SQLite file, shared by producers and workers on one host.

    Needs no server and nothing beyond the standard library. Messages are
    leased to a worker for ``visibility_timeout`` seconds, renewed by a
    heartbeat thread while the worker lives; a reaper returns the messages of
    a dead worker within ``visibility_timeout + reaper_interval``.

    Args:
        path: The database file (created when missing).
        visibility_timeout: Seconds a lease lasts without renewal.
        heartbeat_interval: Seconds between lease renewals; default
            ``visibility_timeout / 3``.
        reaper_interval: Seconds between reaper runs; default
            ``min(1, visibility_timeout / 4)``.
        poll_interval: Longest wait between two checks of an idle queue.
        busy_timeout: Seconds SQLite waits for another process's write lock
            before a transaction is retried (up to three times as long in all).
        synchronous: SQLite's ``synchronous`` pragma. ``"FULL"`` (default)
            syncs to disk every commit that stores a sent message (or an
            operator's move), so a message whose ``send`` returned survives a
            power loss; acks, claims and lease renewals are committed without
            waiting for the disk, since a power cut undoing the last of them
            only runs those messages again. ``"NORMAL"`` waits for the disk
            for nothing: it survives any crash of a process, but may lose the
            last sends when the machine itself goes down.
        **options: Passed to :class:`taskflow.Broker` (``max_deliveries``,
            ``dead_letter_ttl``, ``results``, ...). ``results=True`` keeps
            results in the same file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "taskflow.sqlite3",
        *,
        visibility_timeout: float = 30.0,
        heartbeat_interval: float | None = None,
        reaper_interval: float | None = None,
        poll_interval: float = 0.05,
        busy_timeout: float = 10.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        **options: Any,
    ) -> None:
        if visibility_timeout <= 0 or poll_interval <= 0 or busy_timeout <= 0:
            raise ValueError("visibility_timeout, poll_interval and busy_timeout must be positive")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.visibility_timeout = float(visibility_timeout)
        self.heartbeat_interval = heartbeat_interval or self.visibility_timeout / 3
        self.reaper_interval = reaper_interval or min(1.0, self.visibility_timeout / 4)
        self.poll_interval = poll_interval
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        super().__init__(**options)
        self.owner = ""
        self.clock = HostClock()
        self._db = self._database()
        self._conn: GroupCommit | None = None
        self._tickers: list[Ticker] = []
        self._watcher: Watcher | None = None
        self._held: set[int] = set()
        self._wakeups: dict[str, anyio.Event] = {}
        self._last_renewal = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build from ``sqlite:///relative/path`` or ``sqlite:////absolute/path``.

        Query parameters set numeric options, e.g.
        ``sqlite:///tasks.db?visibility_timeout=10``; keyword options win.

        Raises:
            ValueError: The URL has no path, or an unknown query parameter.
        """
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"expected sqlite:///path, got {url!r}")
        path = parts.path[1:]
        if not path or path == ":memory:":
            raise ValueError(f"a SQLite broker needs a file path shared by processes: {url!r}")
        params: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query, strict_parsing=bool(parts.query)):
            if key in _URL_FLOATS:
                params[key] = float(value)
            elif key in _URL_INTS:
                params[key] = int(value)
            elif key == "synchronous":
                params[key] = value.upper()
            else:
                raise ValueError(f"unknown option {key!r} in {url!r}")
        return cls(path, **{**params, **options})

    def _database(self) -> Database:
        """A connection of this broker's own, reading time from its host clock."""
        return Database(self.path, self.busy_timeout, self.synchronous, clock=self.clock.now)

    def _default_results(self) -> ResultBackend:
        # Imported only when asked for: a broker without results never loads it.
        from taskflow.brokers.sqlite._results import SQLiteResults

        return SQLiteResults(
            self.path, busy_timeout=self.busy_timeout, synchronous=self.synchronous
        )

    # -- plumbing -------------------------------------------------------------

    def _connection(self) -> GroupCommit:
        if self._conn is None:
            raise RuntimeError(f"{self!r} is not connected")
        return self._conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._connection().read(fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._connection().write(fn)

    async def _commit(
        self, fn: Callable[[sqlite3.Connection], int], *, durable: bool = True
    ) -> int:
        """Run ``fn`` in the next group commit; return its row count.

        Only what a power cut must not undo is ``durable``: sends and the
        operator's moves. Losing a settlement, a claim or a renewal to one only
        means a message runs again, which at-least-once allows, so those
        commits do not wait for the disk (see ``Database.write``).
        """
        return await self._connection().commit(fn, durable=durable)

    def _wakeup(self, queue: str) -> anyio.Event:
        """The event that a local send or the watcher sets for ``queue``'s consumers."""
        event = self._wakeups.get(queue)
        if event is None or event.is_set():
            event = self._wakeups[queue] = anyio.Event()
        return event

    def _wake(self, queue: str) -> None:
        event = self._wakeups.pop(queue, None)
        if event is not None:
            event.set()

    # -- lifecycle ----------------------------------------------------------

    async def _connect(self) -> None:
        # A fresh owner per connection: a forked copy or a reconnect never
        # inherits the leases of an earlier one.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._conn = GroupCommit(self._db)
        self._wakeups = {}
        self._held = set()
        await self._write(self._create_schema)
        self._last_renewal = time.monotonic()
        heartbeat_db = self._database()
        reaper_db = self._database()
        self._tickers = [
            Ticker(
                "taskflow-sqlite-heartbeat",
                self.heartbeat_interval,
                self._heartbeat(heartbeat_db),
                heartbeat_db,
            ),
            Ticker(
                "taskflow-sqlite-reaper", self.reaper_interval, self._reaper(reaper_db), reaper_db
            ),
        ]
        for ticker in self._tickers:
            ticker.start()
        self._watcher = Watcher(self._database(), self.poll_interval)
        self._watcher.start()

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        self.clock.read_anchor(conn)
        sql.create_schema(conn)

    async def _close(self) -> None:
        tickers, self._tickers = self._tickers, []
        for ticker in tickers:
            await anyio.to_thread.run_sync(ticker.stop)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await anyio.to_thread.run_sync(watcher.stop)
        if self._conn is not None:
            await self._conn.close()

    def _forget_connections(self) -> None:
        super()._forget_connections()
        self._db = self._database()
        self._tickers = []
        self._watcher = None

    def _heartbeat(self, db: Database) -> Callable[[], None]:
        params = {"owner": self.owner, "lease": self.visibility_timeout}

        def renew(conn: sqlite3.Connection) -> int:
            return conn.execute(sql.RENEW, params).rowcount

        def beat() -> None:
            if not self._held:
                self._last_renewal = time.monotonic()
                return
            renewed = db.write(renew, durable=False)
            now = time.monotonic()
            late = now - self._last_renewal
            self._last_renewal = now
            if late > self.visibility_timeout / 2:
                logger.warning(
                    "lease heartbeat ran %.1f s after the previous one (lease %.1f s)",
                    late,
                    self.visibility_timeout,
                )
            logger.debug("renewed %d leases", renewed)

        return beat

    def _reaper(self, db: Database) -> Callable[[], None]:
        owner = {"owner": self.owner}

        def probe(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute(sql.REAP_PROBE, owner).fetchone()
            return row[0], row[1]

        def reap(conn: sqlite3.Connection) -> tuple[int, int]:
            leases = conn.execute(sql.REAP_LEASES, owner).rowcount
            dead = conn.execute(sql.REAP_DEAD).rowcount
            return leases, dead

        def tick() -> None:
            expired_leases, expired_dead = db.read(probe)
            if not (expired_leases or expired_dead):
                return
            leases, dead = db.write(reap, durable=False)
            if leases:
                logger.warning("reclaimed %d messages whose lease expired", leases)
            if dead:
                logger.info("deleted %d dead letters past their TTL", dead)

        return tick

    # -- producing ----------------------------------------------------------

    async def _enqueue(self, queue: str, envelopes: Sequence[Envelope]) -> None:
        rows = [(queue, e.id, e.body, e.priority, e.delay) for e in envelopes]
        await self._commit(lambda conn: conn.executemany(sql.INSERT, rows).rowcount)
        self._wake(queue)

    # -- consuming ----------------------------------------------------------

    async def _claim(self, queue: str, limit: int) -> list[_SQLiteReceipt]:
        """Lease up to ``limit`` ready messages, best first, in one transaction.

        Suspects (see :data:`SUSPECT_EXPIRIES`) are never leased with fresh
        messages: the batch stops before the first suspect, or is a group of
        suspects (see :func:`pick`).
        """
        params = {"owner": self.owner, "lease": self.visibility_timeout}

        def claim(conn: sqlite3.Connection) -> tuple[list[int], list[Any], bool]:
            candidates = sql.candidates(conn, queue, limit)
            seqs = pick(candidates, limit, self.max_deliveries)
            if not seqs:
                return seqs, [], False
            rows = conn.execute(sql.CLAIM, {**params, "seqs": json.dumps(seqs)}).fetchall()
            return seqs, rows, candidates[0][1] >= SUSPECT_EXPIRIES

        # In the group commit: the acks that arrive meanwhile share its sync to disk.
        order, rows, suspects = await self._connection().commit(claim, durable=False)
        self._held.update(r[0] for r in rows)
        by_seq = {r[0]: r for r in rows}
        quarantine = _Quarantine(len(rows)) if suspects and rows else None
        receipts = []
        for seq in order:  # RETURNING does not keep the order
            if seq not in by_seq:
                continue
            _, message_id, body, deliveries = by_seq[seq]
            receipt = _SQLiteReceipt(self, queue, seq, message_id, body, deliveries)
            receipt.quarantine = quarantine
            receipts.append(receipt)
        if quarantine is not None:
            logger.warning(
                "%d message(s) on %s were in flight when their worker died %d times or more; "
                "running them apart from other work: %s",
                len(receipts),
                queue,
                SUSPECT_EXPIRIES,
                ", ".join(r.message_id for r in receipts),
            )
        return receipts

    async def _next_due(self, queue: str) -> float | None:
        def probe(conn: sqlite3.Connection) -> float | None:
            due: float | None = conn.execute(sql.NEXT_DUE, (queue,)).fetchone()[0]
            return due

        return await self._read(probe)

    async def _idle_wait(self, queue: str, wait: float) -> bool:
        """Wait up to ``wait`` seconds for work; return whether some may be ready."""
        if wait >= self.poll_interval and self._watcher is not None:
            return await self._watch(queue)
        due = await self._next_due(queue)
        if due is not None and due <= 0:
            return True
        if due is not None:
            wait = min(wait, due)
        event = self._wakeup(queue)
        with anyio.move_on_after(wait):
            await event.wait()
            return True
        return False

    async def _watch(self, queue: str) -> bool:
        """Sleep until the watcher thread or a local send says work may be ready."""
        assert self._watcher is not None
        event = self._wakeup(queue)
        self._watcher.watch(queue, event)
        try:
            # Looking again now and then costs nothing and survives a stuck watcher.
            with anyio.move_on_after(1.0):
                await event.wait()
                return True
            return False
        finally:
            self._watcher.unwatch(queue, event)

    async def _consume(
        self, queue: str, prefetch: int, time_limit: float | None
    ) -> AsyncGenerator[Receipt, None]:
        batch: list[_SQLiteReceipt] = []
        wait = self.poll_interval
        try:
            while True:
                # Shielded so that a claimed batch is always in hand to give back.
                with anyio.CancelScope(shield=True):
                    batch = await self._claim(queue, prefetch)
                if batch:
                    wait = 0.005
                    quarantine = batch[0].quarantine
                    batch.reverse()
                    while batch:
                        yield batch.pop()
                    if quarantine is not None:
                        await quarantine.settled.wait()
                    continue
                while not await self._idle_wait(queue, wait):
                    wait = min(wait * 2, self.poll_interval)
        finally:
            if batch:
                with anyio.CancelScope(shield=True):
                    await self._hand_back(batch)

    async def _hand_back(self, receipts: list[_SQLiteReceipt]) -> None:
        """Return claimed messages that were never delivered, undoing their delivery."""
        params = [{"seq": r.seq, "owner": self.owner, "delivered": 0} for r in receipts]
        try:
            await self._commit(
                lambda conn: conn.executemany(sql.REQUEUE, params).rowcount, durable=False
            )
        finally:
            self._held.difference_update(r.seq for r in receipts)
        self._wake(receipts[0].queue)

    # -- inspection ---------------------------------------------------------

    async def _stats(self, queue: str) -> QueueStats:
        row = await self._read(lambda conn: conn.execute(sql.STATS, (queue,)).fetchone())
        return QueueStats(*row)

    async def _dead_letters(self, queue: str, limit: int) -> list[DeadRecord]:
        params = {"queue": queue, "limit": limit}
        rows = await self._read(lambda conn: conn.execute(sql.DEAD_LETTERS, params).fetchall())
        return [DeadRecord(i, body, reason, dead_at) for i, body, reason, dead_at in rows]

    async def _requeue_dead(self, queue: str, ids: list[str] | None) -> int:
        if ids is None:
            statement, params = sql.REQUEUE_DEAD, {"queue": queue}
        else:
            statement = sql.REQUEUE_DEAD + sql.ONLY_IDS
            params = {"queue": queue, "ids": json.dumps(ids)}
        count = await self._commit(lambda conn: conn.execute(statement, params).rowcount)
        if count:
            self._wake(queue)
        return count

    async def _purge(self, queue: str) -> int:
        return await self._commit(lambda conn: conn.execute(sql.PURGE, (queue,)).rowcount)

    async def _purge_dead(self, queue: str) -> int:
        def purge(conn: sqlite3.Connection) -> int:
            count = conn.execute(sql.PURGE_DEAD, {"queue": queue}).rowcount
            conn.execute(sql.DROP_EXPIRED_DEAD, {"queue": queue})
            return count

        return await self._commit(purge)

    async def _browse(
        self, queue: str, state: State, limit: int, offset: int
    ) -> list[BrowseRecord]:
        params = {"queue": queue, "limit": limit, "offset": offset}
        rows = await self._read(
            lambda conn: conn.execute(_inspect.BROWSE[state], params).fetchall()
        )
        return [_inspect.browse_record(row) for row in rows]

    async def _locate(self, queue: str, message_id: str) -> BrowseRecord | None:
        params = {"queue": queue, "id": message_id}
        row = await self._read(lambda conn: conn.execute(_inspect.LOCATE, params).fetchone())
        return None if row is None else _inspect.browse_record(row)

    async def _register_worker(self, worker_id: str, record: bytes, ttl: float) -> None:
        def register(conn: sqlite3.Connection) -> int:
            conn.execute(_inspect.EXPIRE_WORKERS)
            return conn.execute(
                _inspect.REGISTER_WORKER, {"id": worker_id, "record": record, "ttl": ttl}
            ).rowcount

        await self._commit(register, durable=False)

    async def _unregister_worker(self, worker_id: str) -> None:
        params = {"id": worker_id}
        await self._commit(
            lambda conn: conn.execute(_inspect.UNREGISTER_WORKER, params).rowcount, durable=False
        )

    async def _worker_records(self) -> list[bytes]:
        rows = await self._read(lambda conn: conn.execute(_inspect.LIVE_WORKERS).fetchall())
        return [bytes(r[0]) for r in rows]

    async def _known_queues(self) -> list[str]:
        rows = await self._read(lambda conn: conn.execute(sql.QUEUES).fetchall())
        return [r[0] for r in rows]

    async def _unique_claim(self, key: str, message_id: str, ttl: float) -> str | None:
        params = {"key": key, "id": message_id, "ttl": ttl}

        def claim(conn: sqlite3.Connection) -> str:
            conn.execute(sql.UNIQUE_EXPIRE, params)
            conn.execute(sql.UNIQUE_HOLD, params)
            return str(conn.execute(sql.UNIQUE_HOLDER, params).fetchone()[0])

        holder = await self._write(claim)
        return None if holder == message_id else holder

    async def _unique_release(self, key: str, message_id: str, ttl: float) -> None:
        params = {"key": key, "id": message_id, "ttl": ttl}
        await self._write(partial(_execute, sql.UNIQUE_RELEASE, params))

    async def _cancel(self, message_id: str, ttl: float) -> None:
        params = {"id": message_id, "ttl": ttl}

        def cancel(conn: sqlite3.Connection) -> int:
            conn.execute(sql.EXPIRE_CANCELS)
            return _execute(sql.CANCEL, params, conn)

        await self._write(cancel)

    async def _cancellations(self, cursor: str | None) -> tuple[list[str], str | None]:
        params = {"after": int(cursor) if cursor else 0}
        rows = await self._read(lambda conn: conn.execute(sql.CANCELLATIONS, params).fetchall())
        if not rows:
            return [], cursor
        return [r[1] for r in rows], str(rows[-1][0])

    async def _claim_fire(self, schedule: str, fire_at: float, ttl: float) -> bool:
        params = {"schedule": schedule, "fire_at": fire_at, "ttl": ttl}

        def claim(conn: sqlite3.Connection) -> int:
            conn.execute(sql.EXPIRE_FIRES)
            return _execute(sql.CLAIM_FIRE, params, conn)

        return await self._write(claim) == 1

    async def _last_fire(self, schedule: str) -> float | None:
        params = {"schedule": schedule}
        row = await self._read(lambda conn: conn.execute(sql.LAST_FIRE, params).fetchone())
        return None if row is None or row[0] is None else float(row[0])


def _execute(statement: str, params: dict[str, Any], conn: sqlite3.Connection) -> int:
    return conn.execute(statement, params).rowcount


class _SQLiteReceipt(Receipt):
    __slots__ = ("_broker", "quarantine", "queue", "seq")

    def __init__(
        self,
        broker: SQLiteBroker,
        queue: str,
        seq: int,
        message_id: str,
        body: bytes,
        deliveries: int,
    ) -> None:
        super().__init__(message_id, body, deliveries)
        self._broker = broker
        self.queue = queue
        self.seq = seq
        # The group of suspects this one was leased with; its consumer waits for it.
        self.quarantine: _Quarantine | None = None

    async def _settle(self, statement: str, **params: Any) -> int:
        broker = self._broker
        params.update(seq=self.seq, owner=broker.owner)
        try:
            return await broker._commit(partial(_execute, statement, params), durable=False)
        finally:
            broker._held.discard(self.seq)
            if self.quarantine is not None:
                self.quarantine.release()
                self.quarantine = None

    async def _fenced(self, action: str, statement: str, **params: Any) -> None:
        if not await self._settle(statement, **params):
            raise LeaseLost(
                f"{action} of message {self.message_id} on queue {self.queue!r} refused: "
                "this worker's lease expired"
            )

    async def ack(self) -> None:
        await self._fenced("ack", sql.ACK)

    async def dead_letter(self, reason: str) -> None:
        await self._fenced(
            "dead-lettering", sql.DEAD_LETTER, reason=reason, ttl=self._broker.dead_letter_ttl
        )

    async def retry(self, body: bytes, delay: float) -> None:
        await self._fenced("retry", sql.RETRY, body=body, delay=delay)
        if delay <= 0:
            self._broker._wake(self.queue)

    async def requeue(self) -> None:
        if await self._settle(sql.REQUEUE, delivered=1):
            self._broker._wake(self.queue)

    async def defer(self, delay: float) -> None:
        await self._fenced("deferral", sql.DEFER, delay=delay)
        if delay <= 0:
            self._broker._wake(self.queue)
