"""The keeper thread: lease heartbeats, the reaper and an event-loop watchdog.

It runs off the event loop on purpose, with its own blocking Redis client:
an actor that blocks the loop, or a long sync actor, must not let the leases
of healthy work lapse. Every ``heartbeat_interval`` it extends the lease of
each message this process holds; every half ``reaper_interval`` it tries to
take the namespace's reaper lock (held for half an interval), and the winner
promotes due delayed messages, returns expired leases to their queue and drops
expired dead letters in every queue of the namespace. So, whatever the number
of workers, maintenance runs at least once per ``reaper_interval`` and at most
twice, and a dead worker's messages are back within ``visibility_timeout``
plus one ``reaper_interval``, on an idle queue too.

Only the reaper takes leases back, and after an outage of the server (down,
or full and refusing writes) it waits one whole lease before doing so: while
Redis was unreachable no one could renew, so right after it returns every
lease may look expired, and only a dead worker's should be treated so. Every
live worker's keeper retries at least every half heartbeat, so a lease's time
is ample for all of them to renew, on a loaded machine too.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import redis

from taskflow._retrying import Outage
from taskflow.brokers.redis import _scripts
from taskflow.brokers.redis._connection import (
    Target,
    is_full,
    is_outage,
    outage_kind,
    sync_target_client,
)

if TYPE_CHECKING:
    from taskflow.brokers.redis._keys import Keys

logger = logging.getLogger("taskflow.brokers.redis")

_CHUNK = 1000


class Lease(Protocol):
    """What the keeper needs of a held message: its id (raw and packable), lease token, lost flag."""

    rid: bytes
    wid: Any
    token: str
    lost: bool


class LeaseTable:
    """The messages of one queue that this process holds, shared with the keeper thread."""

    def __init__(self, name: str, keys: list[str]) -> None:
        self.name = name
        self.keys = keys
        self._lock = threading.Lock()
        self._held: dict[bytes, Lease] = {}

    def __len__(self) -> int:
        return len(self._held)

    def add(self, leases: Iterable[Lease]) -> None:
        """Start renewing ``leases``."""
        with self._lock:
            for lease in leases:
                self._held[lease.rid] = lease

    def remove(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (it is being settled)."""
        with self._lock:
            if self._held.get(lease.rid) is lease:
                del self._held[lease.rid]

    def snapshot(self) -> list[Lease]:
        """The leases held right now."""
        with self._lock:
            return list(self._held.values())

    def drop_lost(self, rids: Iterable[bytes]) -> int:
        """Mark the leases of ``rids`` lost and stop renewing them; return how many."""
        n = 0
        with self._lock:
            for rid in rids:
                lease = self._held.pop(rid, None)
                if lease is not None:
                    lease.lost = True
                    n += 1
        return n


class Keeper:
    """Renews this process's leases and runs the namespace's reaper, in a thread.

    Args:
        target: Where Redis is (one server, a Cluster, a Sentinel master).
        client_options: Options for the blocking client.
        keys: The namespace's key layout.
        tables: The broker's lease tables by queue name (read, never changed, here).
        lease_ms: Lease length in milliseconds.
        heartbeat_interval: Seconds between lease renewals.
        reaper_interval: Longest time between two maintenance runs, in seconds.
        dead_letter_ttl_ms: How long dead letters are kept, in milliseconds.
        where: The masked URL, for log lines.
    """

    def __init__(
        self,
        *,
        target: Target,
        client_options: dict[str, Any],
        keys: Keys,
        tables: dict[str, LeaseTable],
        lease_ms: int,
        heartbeat_interval: float,
        reaper_interval: float,
        dead_letter_ttl_ms: int,
        where: str,
    ) -> None:
        self._target = target
        self._client_options = client_options
        self._keys = keys
        self._tables = tables
        self._lease_ms = lease_ms
        self._heartbeat_interval = heartbeat_interval
        self._reap_every = reaper_interval / 2
        self._dead_letter_ttl_ms = dead_letter_ttl_ms
        self._lock_token = secrets.token_hex(8)
        # Retries during an outage back off up to half a heartbeat: leases
        # must be renewed soon after the server returns, but never in a busy loop.
        self._outage = Outage(
            logger, "lease heartbeat", where, server="Redis", cap=min(1.0, heartbeat_interval / 2)
        )
        self._full_logged = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._renew_now = False
        self._next_beat = self._next_reap = self._reap_not_before = 0.0
        self._thread = threading.Thread(target=self._run, name="taskflow-redis-keeper", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe_sent: float | None = None
        self._lag_warned = False
        #: Longest event-loop stall seen, in seconds.
        self.max_loop_lag = 0.0
        #: Lease renewals sent, leases found taken back, reaper runs (lock won).
        self.renewals = 0
        self.leases_lost = 0
        self.reaper_runs = 0

    def start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Start the thread; ``loop`` is watched for stalls."""
        self._loop = loop
        self._thread.start()

    def is_alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for it (blocking)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def renew_soon(self) -> None:
        """Renew the held leases now (a consumer just got its connection back)."""
        self._renew_now = True
        self._wake.set()

    def _run(self) -> None:
        try:
            client = sync_target_client(self._target, self._client_options)
        except Exception:
            logger.exception("the lease heartbeat could not start")
            return
        renew = client.register_script(_scripts.RENEW)
        maintain = client.register_script(_scripts.MAINTAIN)
        self._next_beat = self._next_reap = time.monotonic()
        try:
            while not self._stop.is_set():
                wait = self._step(client, renew, maintain)
                self._watch_loop()
                self._wake.wait(max(0.0, wait))
                self._wake.clear()
        finally:
            client.close()

    def _step(self, client: Any, renew: Any, maintain: Any) -> float:
        """Run what is due; return the seconds to wait before the next step."""
        try:
            self._tick(client, renew, maintain)
        except Exception as exc:
            if not is_outage(exc):
                logger.exception("lease heartbeat or reaper failed")
                return self._heartbeat_interval
            # A full server counts as an outage too: while writes are refused
            # no one can renew, so the reaper must hold back afterwards.
            return self._outage.failed(exc, kind=outage_kind(exc))
        return min(self._next_beat, self._next_reap) - time.monotonic()

    def _tick(self, client: Any, renew: Any, maintain: Any) -> None:
        now = time.monotonic()
        if self._outage.since is not None:
            # Back from an outage, leases may have run out while nobody could
            # renew them. Renew first, and hold the reaper back until every
            # live worker had the time to renew its own: only a dead worker's
            # leases should be taken back.
            self._next_beat = now + self._heartbeat_interval
            client.ping()
            self._renew(renew)
            self._outage.recovered()
            hold = max(self._lease_ms / 1000, self._heartbeat_interval + self._reap_every)
            self._reap_not_before = time.monotonic() + hold
            return
        if now >= self._next_beat or self._renew_now:
            self._renew_now = False
            self._next_beat = now + self._heartbeat_interval
            self._renew(renew)
        if now >= self._next_reap:
            self._next_reap = now + self._reap_every
            if now >= self._reap_not_before:
                self._reap(client, maintain)

    def _renew(self, renew: Any) -> bool:
        """Extend the held leases; return whether there were any."""
        talked = False
        for table in list(self._tables.values()):
            leases = table.snapshot()
            for start in range(0, len(leases), _CHUNK):
                chunk = [(lease.wid, lease.token) for lease in leases[start : start + _CHUNK]]
                lost = renew(keys=table.keys, args=[self._lease_ms, _scripts.pack(chunk)])
                talked = True
                self.renewals += 1
                if lost:
                    n = table.drop_lost(lost)
                    if n:
                        self.leases_lost += n
                        logger.warning(
                            "lease_lost: %d message(s) of queue %s were taken back after their "
                            "lease expired; they will run elsewhere and acks for them are refused",
                            n,
                            table.name,
                        )
        return talked

    def _reap(self, client: Any, maintain: Any) -> None:
        if not self._take_lock(client):
            return
        self.reaper_runs += 1
        for raw in client.smembers(self._keys.queues):
            name = raw.decode("utf-8", "replace")
            keys = self._keys.queue(name)
            while True:
                promoted, reaped, expired = maintain(
                    keys=keys, args=[self._dead_letter_ttl_ms, _CHUNK]
                )
                if reaped:
                    logger.warning(
                        "redelivering %d message(s) of queue %s whose lease expired "
                        "(reason lease_expired)",
                        reaped,
                        name,
                    )
                if max(promoted, reaped, expired) < _CHUNK:
                    break

    def _take_lock(self, client: Any) -> bool:
        """Take the namespace's reaper lock for half an interval; False if another holds it."""
        try:
            return bool(
                client.set(
                    self._keys.reaper_lock,
                    self._lock_token,
                    nx=True,
                    px=max(1, int(self._reap_every * 1000)),
                )
            )
        except redis.RedisError as exc:
            if not is_full(exc):
                raise
        # At maxmemory Redis refuses the lock's write, but not the reaper's
        # moves (each script frees before it writes). The lock only saves
        # work: every maintenance step is one atomic script, safe to run by
        # several reapers at once, so run unlocked rather than not at all.
        if not self._full_logged:
            self._full_logged = True
            logger.warning(
                "Redis is at maxmemory: the reaper lock cannot be written, reaping without it"
            )
        return True

    def _watch_loop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        now = time.monotonic()
        sent = self._probe_sent
        if sent is not None:
            lag = now - sent
            self.max_loop_lag = max(self.max_loop_lag, lag)
            if lag > max(1.0, self._heartbeat_interval) and not self._lag_warned:
                self._lag_warned = True
                logger.warning(
                    "event_loop_blocked: the event loop has not run for %.1f s "
                    "(leases are still being renewed)",
                    lag,
                )
            return
        self._probe_sent = now
        try:
            loop.call_soon_threadsafe(self._probe_done)
        except RuntimeError:  # the loop closed
            self._loop = None

    def _probe_done(self) -> None:
        sent = self._probe_sent
        if sent is not None:
            self.max_loop_lag = max(self.max_loop_lag, time.monotonic() - sent)
        self._probe_sent = None
        self._lag_warned = False
