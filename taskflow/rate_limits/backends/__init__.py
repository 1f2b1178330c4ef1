"""Where rate limiters keep their state: in memory, in a SQLite file or in Redis.

Every operation a limiter needs is one atomic step on the store (one Lua
script on Redis, one transaction on SQLite, one lock on memory), and all
times are read by the store itself (Redis ``TIME``, SQLite's clock inside
the transaction), so workers with skewed clocks still agree.

The operations, each under a limiter's ``key``:

* ``hold(key, holder, limit, ttl)``: take one of ``limit`` slots for
  ``holder`` until ``ttl`` seconds pass (a holder that dies is released by
  then); ``release(key, holder)`` gives it back.
* ``hit_window(key, holder, limit, window)``: record one event if fewer than
  ``limit`` happened in the last ``window`` seconds (sliding).
* ``hit_bucket(key, limit, bucket)``: count one event if the current fixed
  bucket of ``bucket`` seconds has fewer than ``limit``.
* ``barrier_create(key, parties, ttl)``, ``barrier_arrive(key)`` and
  ``barrier_wait(key, timeout)`` for :class:`~taskflow.rate_limits.Barrier`.

The three ``hold``/``hit`` operations return ``None`` when they took room,
else a :class:`Full`. A caller that will come back (a deferred message)
names itself with ``waiter``: the store keeps a line of waiters per key, in
the order they first found it full, and tells each its place, so deferred
messages across all workers come back in turn instead of all at once. A
waiter leaves the line when it gets room (or after ``LINE_TTL`` seconds).

Each operation also has a ``_sync`` twin, for sync actors running in
threads (``limiter.acquire_sync()``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from taskflow.broker import Broker
    from taskflow.rate_limits.backends.memory import MemoryBackend
    from taskflow.rate_limits.backends.redis import RedisBackend
    from taskflow.rate_limits.backends.sqlite import SQLiteBackend

__all__ = [
    "LINE_TTL",
    "Full",
    "MemoryBackend",
    "RateLimitBackend",
    "RedisBackend",
    "SQLiteBackend",
    "for_broker",
]

#: Seconds a waiter stays in a key's line without coming back.
LINE_TTL = 60.0


class Full(NamedTuple):
    """The answer of an operation that found no room.

    Attributes:
        retry_after: Seconds until there may be room (a window's oldest event
            leaving it, the next bucket); 0 when unknown (concurrent slots).
        ahead: Waiters before this one in the key's line (0 without ``waiter``).
    """

    retry_after: float
    ahead: int


class RateLimitBackend(ABC):
    """Base class of rate-limit backends: the atomic operations limiters are built on.

    Subclasses implement each operation twice, ``async`` and ``_sync``; both
    give the same answers on the same store.
    """

    async def close(self) -> None:  # noqa: B027 - most backends have nothing to close
        """Close connections; the next operation opens them again."""

    @abstractmethod
    async def hold(
        self, key: str, holder: str, limit: int, ttl: float, waiter: str | None = None
    ) -> Full | None:
        """Take a slot of ``key`` for ``holder`` for at most ``ttl`` seconds."""

    @abstractmethod
    def hold_sync(
        self, key: str, holder: str, limit: int, ttl: float, waiter: str | None = None
    ) -> Full | None:
        """Same as :meth:`hold`, blocking."""

    @abstractmethod
    async def release(self, key: str, holder: str) -> None:
        """Give back ``holder``'s slot of ``key`` (nothing happens if it expired)."""

    @abstractmethod
    def release_sync(self, key: str, holder: str) -> None:
        """Same as :meth:`release`, blocking."""

    @abstractmethod
    async def hit_window(
        self, key: str, holder: str, limit: int, window: float, waiter: str | None = None
    ) -> Full | None:
        """Record an event if fewer than ``limit`` happened in the last ``window`` seconds."""

    @abstractmethod
    def hit_window_sync(
        self, key: str, holder: str, limit: int, window: float, waiter: str | None = None
    ) -> Full | None:
        """Same as :meth:`hit_window`, blocking."""

    @abstractmethod
    async def hit_bucket(
        self, key: str, limit: int, bucket: float, waiter: str | None = None
    ) -> Full | None:
        """Count an event if the current ``bucket``-second bucket has fewer than ``limit``."""

    @abstractmethod
    def hit_bucket_sync(
        self, key: str, limit: int, bucket: float, waiter: str | None = None
    ) -> Full | None:
        """Same as :meth:`hit_bucket`, blocking."""

    @abstractmethod
    async def barrier_create(self, key: str, parties: int, ttl: float) -> bool:
        """Create the barrier ``key`` for ``parties``; False if it already exists."""

    @abstractmethod
    async def barrier_arrive(self, key: str) -> bool:
        """Count one party in; return whether the barrier is now released.

        Raises:
            LookupError: No barrier ``key`` exists (never created, or expired).
        """

    @abstractmethod
    async def barrier_wait(self, key: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``key`` to be released; return whether it was."""


def for_broker(broker: Broker) -> RateLimitBackend | None:
    """The backend on ``broker``'s own server, or ``None`` when it has none (RabbitMQ).

    The Redis broker's backend uses the broker's URL and namespace, the
    SQLite broker's its file, the memory broker's this process's memory.
    """
    mro = {c.__name__ for c in type(broker).__mro__}
    if "RedisBroker" in mro:
        from taskflow.rate_limits.backends.redis import RedisBackend

        return RedisBackend(broker.url, namespace=broker.namespace)  # type: ignore[attr-defined]
    if "SQLiteBroker" in mro:
        from taskflow.rate_limits.backends.sqlite import SQLiteBackend

        return SQLiteBackend(broker)
    if "MemoryBroker" in mro:
        from taskflow.rate_limits.backends.memory import MemoryBackend

        return MemoryBackend()
    return None


def __getattr__(name: str) -> Any:
    # Backends load lazily so that importing this package needs no driver.
    if name == "MemoryBackend":
        from taskflow.rate_limits.backends.memory import MemoryBackend

        return MemoryBackend
    if name == "SQLiteBackend":
        from taskflow.rate_limits.backends.sqlite import SQLiteBackend

        return SQLiteBackend
    if name == "RedisBackend":
        from taskflow.rate_limits.backends.redis import RedisBackend

        return RedisBackend
    raise AttributeError(name)
