"""Rate-limit state in this process's memory: for tests and single-process apps."""

from __future__ import annotations

import threading
import time
from collections import deque

import anyio

from taskflow.rate_limits.backends import LINE_TTL, Full, RateLimitBackend


class _Barrier:
    __slots__ = ("arrived", "expires_at", "parties", "released")

    def __init__(self, parties: int, expires_at: float) -> None:
        self.parties = parties
        self.arrived = 0
        self.expires_at = expires_at
        self.released = anyio.Event()


class MemoryBackend(RateLimitBackend):
    """Rate-limit state in memory, shared by the limiters of one process only.

    Every operation holds one lock, so async actors and sync actors in
    threads see the same counts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders: dict[str, dict[str, float]] = {}
        self._events: dict[str, deque[float]] = {}
        self._buckets: dict[str, tuple[int, int]] = {}
        self._barriers: dict[str, _Barrier] = {}
        self._lines: dict[str, dict[str, float]] = {}

    def __repr__(self) -> str:
        return "MemoryBackend()"

    # -- the line of waiters ---------------------------------------------------

    def _settle(
        self, line_key: str, waiter: str | None, full: bool, retry_after: float
    ) -> Full | None:
        """Under the lock: leave the line on room, join it (or find one's place) when full."""
        line = self._lines.get(line_key)
        if not full:
            if waiter is not None and line is not None:
                line.pop(waiter, None)
            return None
        if waiter is None:
            return Full(retry_after, 0)
        now = time.monotonic()
        line = self._lines.setdefault(line_key, {})
        for name in [w for w, since in line.items() if since <= now - LINE_TTL]:
            del line[name]
        line.setdefault(waiter, now)
        return Full(retry_after, list(line).index(waiter))

    # -- concurrent -----------------------------------------------------------

    def hold_sync(
        self, key: str, holder: str, limit: int, ttl: float, waiter: str | None = None
    ) -> Full | None:
        """Take a slot; see :meth:`RateLimitBackend.hold`."""
        now = time.monotonic()
        with self._lock:
            holders = self._holders.setdefault(key, {})
            for name in [h for h, until in holders.items() if until <= now]:
                del holders[name]
            full = len(holders) >= limit and holder not in holders
            if not full:
                holders[holder] = now + ttl
            return self._settle(f"c:{key}", waiter, full, 0.0)

    async def hold(
        self, key: str, holder: str, limit: int, ttl: float, waiter: str | None = None
    ) -> Full | None:
        """Take a slot; see :meth:`RateLimitBackend.hold`."""
        return self.hold_sync(key, holder, limit, ttl, waiter)

    def release_sync(self, key: str, holder: str) -> None:
        """Give a slot back; see :meth:`RateLimitBackend.release`."""
        with self._lock:
            holders = self._holders.get(key)
            if holders is not None:
                holders.pop(holder, None)
                if not holders:
                    del self._holders[key]

    async def release(self, key: str, holder: str) -> None:
        """Give a slot back; see :meth:`RateLimitBackend.release`."""
        self.release_sync(key, holder)

    # -- window and bucket ----------------------------------------------------

    def hit_window_sync(
        self, key: str, holder: str, limit: int, window: float, waiter: str | None = None
    ) -> Full | None:
        """Record an event in a sliding window; see :meth:`RateLimitBackend.hit_window`."""
        now = time.monotonic()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - window:
                events.popleft()
            full = len(events) >= limit
            if not full:
                events.append(now)
            retry_after = max(events[0] + window - now, 0.0) if full else 0.0
            return self._settle(f"w:{key}", waiter, full, retry_after)

    async def hit_window(
        self, key: str, holder: str, limit: int, window: float, waiter: str | None = None
    ) -> Full | None:
        """Record an event in a sliding window; see :meth:`RateLimitBackend.hit_window`."""
        return self.hit_window_sync(key, holder, limit, window, waiter)

    def hit_bucket_sync(
        self, key: str, limit: int, bucket: float, waiter: str | None = None
    ) -> Full | None:
        """Count an event in a fixed bucket; see :meth:`RateLimitBackend.hit_bucket`."""
        now = time.time()
        current = int(now // bucket)
        with self._lock:
            number, count = self._buckets.get(key, (current, 0))
            if number != current:
                count = 0
            full = count >= limit
            if not full:
                self._buckets[key] = (current, count + 1)
            retry_after = (current + 1) * bucket - now if full else 0.0
            return self._settle(f"b:{key}", waiter, full, retry_after)

    async def hit_bucket(
        self, key: str, limit: int, bucket: float, waiter: str | None = None
    ) -> Full | None:
        """Count an event in a fixed bucket; see :meth:`RateLimitBackend.hit_bucket`."""
        return self.hit_bucket_sync(key, limit, bucket, waiter)

    # -- barrier --------------------------------------------------------------

    def _barrier(self, key: str) -> _Barrier | None:
        barrier = self._barriers.get(key)
        if barrier is not None and barrier.expires_at <= time.monotonic():
            del self._barriers[key]
            return None
        return barrier

    async def barrier_create(self, key: str, parties: int, ttl: float) -> bool:
        """Create a barrier; see :meth:`RateLimitBackend.barrier_create`."""
        with self._lock:
            if self._barrier(key) is not None:
                return False
            self._barriers[key] = _Barrier(parties, time.monotonic() + ttl)
            return True

    async def barrier_arrive(self, key: str) -> bool:
        """Count a party in; see :meth:`RateLimitBackend.barrier_arrive`."""
        with self._lock:
            barrier = self._barrier(key)
            if barrier is None:
                raise LookupError(f"no barrier {key!r}")
            barrier.arrived += 1
            if barrier.arrived >= barrier.parties:
                barrier.released.set()
            return barrier.released.is_set()

    async def barrier_wait(self, key: str, timeout: float) -> bool:
        """Wait for a release; see :meth:`RateLimitBackend.barrier_wait`."""
        with self._lock:
            barrier = self._barrier(key)
        if barrier is None:
            return False
        with anyio.move_on_after(timeout):
            await barrier.released.wait()
        return barrier.released.is_set()
