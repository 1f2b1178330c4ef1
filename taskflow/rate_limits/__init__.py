"""Rate limits and flow control across every worker: limiters and a barrier.

A limiter names a ``key`` on a backend (:mod:`taskflow.rate_limits.backends`)
that all workers share, so its limit holds across processes and hosts:

* :class:`ConcurrentRateLimiter`: at most ``limit`` holders at once; a holder
  that dies without giving its slot back loses it after ``ttl`` seconds.
* :class:`WindowRateLimiter`: at most ``limit`` acquisitions in any sliding
  ``window`` of seconds.
* :class:`BucketRateLimiter`: at most ``limit`` acquisitions per fixed
  bucket of ``bucket`` seconds (buckets start at multiples of ``bucket``
  since the epoch).

``async with limiter.acquire():`` raises :class:`taskflow.RateLimitExceeded`
when there is no room; with ``raise_on_failure=False`` it yields whether it
got room instead. Sync actors use ``with limiter.acquire_sync():``. Raised in
an actor, or met by an actor's ``rate_limit=`` option, ``RateLimitExceeded``
defers the message instead of failing it (see
:class:`taskflow.middleware.RateLimits`).

:class:`Barrier` lets ``parties`` workers wait until all of them arrived.
"""

from __future__ import annotations

import os
import secrets
import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio

from taskflow._time import seconds
from taskflow.errors import RateLimitExceeded
from taskflow.rate_limits.backends import Full, RateLimitBackend

__all__ = [
    "Barrier",
    "BucketRateLimiter",
    "ConcurrentRateLimiter",
    "RateLimiter",
    "WindowRateLimiter",
]

_PREFIX = f"{socket.gethostname()}:{os.getpid()}"


def _holder() -> str:
    return f"{_PREFIX}:{secrets.token_hex(6)}"


def _current_message_id(deferring: bool) -> str | None:
    """The id of the message being run, which a raised RateLimitExceeded defers."""
    if not deferring:
        return None
    from taskflow.middleware.current_message import current_message

    message = current_message()
    return None if message is None else message.id


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


class RateLimiter(ABC):
    """Base class of limiters: a ``key`` on a shared ``backend`` with room for ``limit``.

    Args:
        backend: Where the limiter's state lives.
        key: Names the limit; limiters with the same backend and key share it.
        limit: How many acquisitions the limiter allows (at once, per window
            or per bucket).
    """

    def __init__(self, backend: RateLimitBackend, key: str, limit: int) -> None:
        if not isinstance(backend, RateLimitBackend):
            raise TypeError(f"backend must be a RateLimitBackend, not {backend!r}")
        if not key:
            raise ValueError("key must not be empty")
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        self.backend = backend
        self.key = key
        self.limit = limit

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r}, {self.key!r}, limit={self.limit})"

    @abstractmethod
    async def _take(self, holder: str, waiter: str | None) -> Full | None:
        """Take room for ``holder``: ``None`` when taken (see :class:`RateLimitBackend`)."""

    @abstractmethod
    def _take_sync(self, holder: str, waiter: str | None) -> Full | None: ...

    async def _give_back(self, holder: str) -> None:  # noqa: B027 - windows give nothing back
        """Give ``holder``'s room back (only concurrent limiters have any to give)."""

    def _give_back_sync(self, holder: str) -> None:  # noqa: B027 - likewise
        """Same as :meth:`_give_back`, blocking."""

    async def try_acquire(self) -> str | None:
        """Take room without waiting; return the holder to :meth:`release`, or ``None``."""
        holder = _holder()
        return holder if await self._take(holder, None) is None else None

    async def release(self, holder: str) -> None:
        """Give back the room :meth:`try_acquire` or :meth:`acquire_nowait` took for ``holder``."""
        await self._give_back(holder)

    async def acquire_nowait(self, *, waiter: str | None = None) -> str:
        """Take room without waiting; return the holder to :meth:`release`.

        Args:
            waiter: Names a caller that will come back if there is no room
                (a deferred message's id): it joins the key's line, and the
                exception says its place.

        Raises:
            RateLimitExceeded: No room.
        """
        holder = _holder()
        full = await self._take(holder, waiter)
        if full is not None:
            raise self._exceeded(full)
        return holder

    def _exceeded(self, full: Full) -> RateLimitExceeded:
        exc = RateLimitExceeded(self.key, full.retry_after or None)
        exc.limiter = self
        exc.ahead = full.ahead
        return exc

    @asynccontextmanager
    async def acquire(self, *, raise_on_failure: bool = True) -> AsyncIterator[bool]:
        """Hold room in the limiter for the ``async with`` block.

        Yields whether room was taken (always ``True`` when raising).

        Raises:
            RateLimitExceeded: No room, and ``raise_on_failure`` is true.
        """
        try:
            holder = await self.acquire_nowait(waiter=_current_message_id(raise_on_failure))
        except RateLimitExceeded:
            if raise_on_failure:
                raise
            yield False
            return
        try:
            yield True
        finally:
            # Given back also when the block is cancelled (a time limit).
            with anyio.CancelScope(shield=True):
                await self._give_back(holder)

    @contextmanager
    def acquire_sync(self, *, raise_on_failure: bool = True) -> Iterator[bool]:
        """Hold room for the ``with`` block, blocking: for sync actors and threads.

        Yields whether room was taken (always ``True`` when raising).

        Raises:
            RateLimitExceeded: No room, and ``raise_on_failure`` is true.
        """
        holder = _holder()
        full = self._take_sync(holder, _current_message_id(raise_on_failure))
        if full is not None:
            if raise_on_failure:
                raise self._exceeded(full)
            yield False
            return
        try:
            yield True
        finally:
            self._give_back_sync(holder)


class ConcurrentRateLimiter(RateLimiter):
    """At most ``limit`` holders at once, across every worker sharing the backend.

    Args:
        backend: Where the holders are kept.
        key: Names the limit.
        limit: Most holders at once.
        ttl: Seconds after which a holder that never gave its slot back
            (its process died) loses it. Make it longer than the longest
            hold: a holder past its ``ttl`` no longer counts.
    """

    def __init__(self, backend: RateLimitBackend, key: str, limit: int, ttl: float = 600.0) -> None:
        super().__init__(backend, key, limit)
        self.ttl = _positive("ttl", seconds(ttl))

    async def _take(self, holder: str, waiter: str | None) -> Full | None:
        return await self.backend.hold(self.key, holder, self.limit, self.ttl, waiter)

    def _take_sync(self, holder: str, waiter: str | None) -> Full | None:
        return self.backend.hold_sync(self.key, holder, self.limit, self.ttl, waiter)

    async def _give_back(self, holder: str) -> None:
        await self.backend.release(self.key, holder)

    def _give_back_sync(self, holder: str) -> None:
        self.backend.release_sync(self.key, holder)


class WindowRateLimiter(RateLimiter):
    """At most ``limit`` acquisitions in any sliding ``window`` of seconds.

    Args:
        backend: Where the acquisitions are kept.
        key: Names the limit.
        limit: Most acquisitions per window.
        window: Length of the sliding window, in seconds.
    """

    def __init__(self, backend: RateLimitBackend, key: str, limit: int, window: float) -> None:
        super().__init__(backend, key, limit)
        self.window = _positive("window", seconds(window))

    async def _take(self, holder: str, waiter: str | None) -> Full | None:
        return await self.backend.hit_window(self.key, holder, self.limit, self.window, waiter)

    def _take_sync(self, holder: str, waiter: str | None) -> Full | None:
        return self.backend.hit_window_sync(self.key, holder, self.limit, self.window, waiter)


class BucketRateLimiter(RateLimiter):
    """At most ``limit`` acquisitions per fixed bucket of ``bucket`` seconds.

    Buckets start at whole multiples of ``bucket`` since the epoch (by the
    backend's clock), so a burst of ``limit`` at the end of one bucket may
    be followed by another at the start of the next; use
    :class:`WindowRateLimiter` where that matters.

    Args:
        backend: Where the counts are kept.
        key: Names the limit.
        limit: Most acquisitions per bucket.
        bucket: Length of a bucket, in seconds.
    """

    def __init__(self, backend: RateLimitBackend, key: str, limit: int, bucket: float) -> None:
        super().__init__(backend, key, limit)
        self.bucket = _positive("bucket", seconds(bucket))

    async def _take(self, holder: str, waiter: str | None) -> Full | None:
        return await self.backend.hit_bucket(self.key, self.limit, self.bucket, waiter)

    def _take_sync(self, holder: str, waiter: str | None) -> Full | None:
        return self.backend.hit_bucket_sync(self.key, self.limit, self.bucket, waiter)


class Barrier:
    """Lets ``parties`` workers wait until all of them have arrived.

    One party calls :meth:`create`; each party then calls :meth:`wait`,
    which counts it in and waits until the last one arrives.

    Args:
        backend: Where the barrier is kept.
        key: Names the barrier.
        ttl: Seconds the barrier exists after :meth:`create`.
    """

    def __init__(self, backend: RateLimitBackend, key: str, ttl: float = 900.0) -> None:
        if not isinstance(backend, RateLimitBackend):
            raise TypeError(f"backend must be a RateLimitBackend, not {backend!r}")
        self.backend = backend
        self.key = key
        self.ttl = _positive("ttl", seconds(ttl))

    def __repr__(self) -> str:
        return f"Barrier({self.backend!r}, {self.key!r}, ttl={self.ttl})"

    async def create(self, parties: int) -> bool:
        """Create the barrier for ``parties``; False if it already exists (nothing changes)."""
        if not isinstance(parties, int) or parties < 1:
            raise ValueError(f"parties must be a positive int, got {parties!r}")
        return await self.backend.barrier_create(self.key, parties, self.ttl)

    async def wait(self, timeout: float | None = None) -> bool:
        """Arrive, then wait up to ``timeout`` seconds (default: the ttl) for the others.

        Returns whether the barrier was released: every party arrived.

        Raises:
            LookupError: The barrier does not exist (never created, or expired).
        """
        if await self.backend.barrier_arrive(self.key):
            return True
        limit = self.ttl if timeout is None else seconds(timeout)
        return await self.backend.barrier_wait(self.key, limit)
