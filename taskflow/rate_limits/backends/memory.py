"""Rate-limit state in this process's memory: for tests and single-process apps."""

from __future__ import annotations

import threading
import time
from collections import deque

import anyio

from taskflow.rate_limits.backends import RateLimitBackend


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

    def __repr__(self) -> str:
        return "MemoryBackend()"

    # -- concurrent -----------------------------------------------------------

    def hold_sync(self, key: str, holder: str, limit: int, ttl: float) -> float | None:
        """Take a slot; see :meth:`RateLimitBackend.hold`."""
        now = time.monotonic()
        with self._lock:
            holders = self._holders.setdefault(key, {})
            for name in [h for h, until in holders.items() if until <= now]:
                del holders[name]
            if len(holders) >= limit:
                return 0.0  # when a holder finishes is unknown
            holders[holder] = now + ttl
            return None

    async def hold(self, key: str, holder: str, limit: int, ttl: float) -> float | None:
        """Take a slot; see :meth:`RateLimitBackend.hold`."""
        return self.hold_sync(key, holder, limit, ttl)

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

    def hit_window_sync(self, key: str, holder: str, limit: int, window: float) -> float | None:
        """Record an event in a sliding window; see :meth:`RateLimitBackend.hit_window`."""
        now = time.monotonic()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - window:
                events.popleft()
            if len(events) >= limit:
                return max(events[0] + window - now, 0.0)
            events.append(now)
            return None

    async def hit_window(self, key: str, holder: str, limit: int, window: float) -> float | None:
        """Record an event in a sliding window; see :meth:`RateLimitBackend.hit_window`."""
        return self.hit_window_sync(key, holder, limit, window)

    def hit_bucket_sync(self, key: str, limit: int, bucket: float) -> float | None:
        """Count an event in a fixed bucket; see :meth:`RateLimitBackend.hit_bucket`."""
        now = time.time()
        current = int(now // bucket)
        with self._lock:
            number, count = self._buckets.get(key, (current, 0))
            if number != current:
                count = 0
            if count >= limit:
                return (current + 1) * bucket - now
            self._buckets[key] = (current, count + 1)
            return None

    async def hit_bucket(self, key: str, limit: int, bucket: float) -> float | None:
        """Count an event in a fixed bucket; see :meth:`RateLimitBackend.hit_bucket`."""
        return self.hit_bucket_sync(key, limit, bucket)

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
