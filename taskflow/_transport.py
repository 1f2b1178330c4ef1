"""The transport contract: what every broker keeps, and the types its hooks exchange.

A broker is two things: the user's hub (:class:`taskflow.Broker`: actors,
middleware, codec, results) and a *transport* that moves bytes to and from
one server. This module is the transport's half. A new broker subclasses
:class:`taskflow.Broker` and implements the ``_``-prefixed hooks of
:class:`Transport` below, plus a :class:`Receipt` for fetched messages; it
needs to read nothing else. ``taskflow.brokers.memory`` is the readable
reference implementation, and ``tests/brokers/`` checks every broker against
the same contract:

* At-least-once: a message leaves the broker only when acked. A consumer that
  dies loses nothing; its messages come back within a bounded time.
* Each message has a server-side delivery count (:attr:`Receipt.delivery_count`);
  the hub dead-letters it past ``max_deliveries`` with reason
  ``delivery_limit_exceeded``.
* ``_enqueue`` returns only once the server holds every envelope.
* Delayed envelopes become ready at their time, never before, judged by the
  server's clock.
* Within a queue, higher ``priority`` is delivered first.
* Dead letters keep the raw body and the reason for the hub's
  ``dead_letter_ttl`` seconds.
* Closing a ``_consume`` iterator hands back every receipt it fetched but did
  not yield.

Hooks know nothing about actors, middleware or message fields: they receive
encoded bodies and what the hub worked out for them (priority, delay).

The module is private so that it is not one more top-level name of the
package; code outside taskflow imports these names from :mod:`taskflow.broker`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from taskflow._inspection import BrowseRecord, State

__all__ = ["DeadRecord", "Envelope", "QueueStats", "Receipt", "Transport"]


class QueueStats(NamedTuple):
    """Message counts of one queue."""

    ready: int
    delayed: int
    in_flight: int
    dead: int


class Envelope(NamedTuple):
    """An encoded message ready for a transport's ``_enqueue``."""

    id: str
    body: bytes
    priority: int
    delay: float  # seconds from now, judged by the server's clock; 0 means ready


class DeadRecord(NamedTuple):
    """A dead letter as a transport stores it."""

    id: str
    body: bytes
    reason: str
    dead_at: float  # unix time


class Receipt(ABC):
    """A transport's handle on one fetched message: the means to settle it.

    ``message_id`` is the transport's id for the stored message (the message's
    own id for everything taskflow wrote), ``delivery_count`` the server-side
    count including this delivery. Only the worker's settler calls the
    settling methods, and at most one of them once per receipt.
    """

    __slots__ = ("body", "delivery_count", "message_id")

    def __init__(self, message_id: str, body: bytes, delivery_count: int) -> None:
        self.message_id = message_id
        self.body = body
        self.delivery_count = delivery_count

    @abstractmethod
    async def ack(self) -> None:
        """Remove the message for good. Raises ``LeaseLost`` if the lease expired."""

    @abstractmethod
    async def dead_letter(self, reason: str) -> None:
        """Move the message, as stored, to the queue's dead letters with ``reason``."""

    @abstractmethod
    async def retry(self, body: bytes, delay: float) -> None:
        """Replace the message with ``body`` and make it ready after ``delay`` seconds.

        The old delivery is settled and the new body stored in one atomic step.
        """

    @abstractmethod
    async def requeue(self) -> None:
        """Return the message unchanged, ready at once, without counting a retry."""

    async def defer(self, delay: float) -> None:
        """Put the message back, unchanged, ready after ``delay`` seconds.

        Neither a retry nor this delivery counts: the next delivery's count
        is this one's. This default stores the body again through
        :meth:`retry`, which restarts the count; transports that can undo
        one delivery do so.
        """
        await self.retry(self.body, delay)

    async def start(self) -> bool:
        """The worker is about to run the message; return False if it must not (lease lost).

        A transport that tells a message running when its worker died (a
        suspect) from one merely fetched records it here. The default
        records nothing.
        """
        return True


class Transport(ABC):
    """The hooks a broker implements; :class:`taskflow.Broker` calls them.

    Every hook is called on a connected broker (the hub connects first), and
    raises :class:`taskflow.BrokerUnavailable` when the server cannot be
    reached after the transport's bounded retries.
    """

    __slots__ = ()

    @abstractmethod
    async def _connect(self) -> None:
        """Open connections and declare what the transport needs on the server."""

    @abstractmethod
    async def _close(self) -> None:
        """Close connections; ``_connect`` may be called again later."""

    @abstractmethod
    async def _enqueue(self, queue: str, envelopes: Sequence[Envelope]) -> None:
        """Store ``envelopes`` in ``queue``, in one round trip where the server allows."""

    @abstractmethod
    def _consume(
        self, queue: str, prefetch: int, time_limit: float | None
    ) -> AsyncGenerator[Receipt, None]:
        """Yield receipts from ``queue``, fetching up to ``prefetch`` per round trip.

        Runs until closed; closing it hands back what it fetched but did not
        yield. Reconnects by itself through outages. ``time_limit`` is how
        long a message of ``queue`` may run, in seconds, from the actors the
        hub knows (the longest of their limits; ``None`` when one has none,
        0 when no actor of ``queue`` is declared), for a server that watches
        how long a delivery stays unsettled.
        """

    @abstractmethod
    async def _stats(self, queue: str) -> QueueStats:
        """Count ``queue``'s ready, delayed, in-flight and dead messages."""

    @abstractmethod
    async def _dead_letters(self, queue: str, limit: int) -> list[DeadRecord]:
        """Return up to ``limit`` dead letters of ``queue``, oldest first."""

    @abstractmethod
    async def _requeue_dead(self, queue: str, ids: list[str] | None) -> int:
        """Move dead letters (all when ``ids`` is ``None``) back to ready; return how many."""

    @abstractmethod
    async def _purge(self, queue: str) -> int:
        """Delete ``queue``'s ready and delayed messages; return how many."""

    @abstractmethod
    async def _purge_dead(self, queue: str) -> int:
        """Delete ``queue``'s dead letters; return how many."""

    async def _known_queues(self) -> list[str]:
        """Queues the server knows of (default: none beyond the declared ones)."""
        return []

    async def _cancel(self, message_id: str, ttl: float) -> None:
        """Append ``message_id`` to the cancel log, kept at least ``ttl`` seconds.

        This default keeps the log in this process only (the memory broker);
        transports shared by processes override it.
        """
        log: list[str] = self.__dict__.setdefault("_local_cancels", [])
        log.append(message_id)

    async def _cancellations(self, cursor: str | None) -> tuple[list[str], str | None]:
        """Ids appended to the cancel log after ``cursor`` (all kept ones for ``None``).

        Returns the ids and the cursor to pass next time.
        """
        log: list[str] = self.__dict__.get("_local_cancels", [])
        start = int(cursor) if cursor else 0
        return log[start:], str(len(log))

    def _cancel_lookups(self) -> bool:
        """Whether :meth:`_was_cancelled` must be asked before a message runs.

        True for a transport whose cancel signal can miss a worker that was
        not listening when it was sent (RabbitMQ with a result backend).
        """
        return False

    async def _was_cancelled(self, message_id: str) -> bool:
        """Whether ``message_id`` was cancelled, looked up on the server (default: False)."""
        return False

    async def _unique_claim(self, key: str, message_id: str, ttl: float) -> str | None:
        """Hold ``key`` for ``message_id`` for ``ttl`` s unless held; return the holder's id.

        Atomic on the server: of senders racing for a free key, one holds it
        and the others get its id. This default holds keys in this process.
        """
        keys: dict[str, tuple[str, float]] = self.__dict__.setdefault("_local_unique", {})
        now = time.monotonic()
        held = keys.get(key)
        if held is not None and held[1] > now:
            return held[0]
        keys[key] = (message_id, now + ttl)
        return None

    async def _unique_release(self, key: str, message_id: str, ttl: float) -> None:
        """Let ``key`` go ``ttl`` seconds from now, if ``message_id`` still holds it."""
        keys: dict[str, tuple[str, float]] = self.__dict__.get("_local_unique", {})
        held = keys.get(key)
        if held is not None and held[0] == message_id:
            keys[key] = (message_id, time.monotonic() + ttl)

    async def _claim_fire(self, schedule: str, fire_at: float, ttl: float) -> bool:
        """Claim fire time ``fire_at`` (unix time) of ``schedule``; True for the one claimer.

        Atomic on the server: among every process that claims the same
        schedule and fire time, exactly one gets True. The claim is kept at
        least ``ttl`` seconds. This default claims within this process only
        (the memory broker); transports shared by processes override it.
        """
        fires: dict[str, float] = self.__dict__.setdefault("_local_fires", {})
        if fires.get(schedule, float("-inf")) >= fire_at:
            return False
        fires[schedule] = fire_at
        return True

    async def _last_fire(self, schedule: str) -> float | None:
        """The latest fire time of ``schedule`` claimed so far (unix time), if known."""
        fires: dict[str, float] = self.__dict__.get("_local_fires", {})
        return fires.get(schedule)

    # -- inspection ---------------------------------------------------------

    async def _browse(
        self, queue: str, state: State, limit: int, offset: int
    ) -> list[BrowseRecord]:
        """Up to ``limit`` messages of ``queue`` in ``state``, skipping ``offset``.

        Ready messages come in delivery order, delayed ones due-first,
        in-flight ones by lease expiry, dead letters newest first. The cost
        is bounded by ``offset + limit``, never by the queue's length.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot browse its queues")

    async def _locate(self, queue: str, message_id: str) -> BrowseRecord | None:
        """The message ``message_id`` of ``queue`` in whatever state it is, if held."""
        raise NotImplementedError(f"{type(self).__name__} cannot look up messages")

    async def _register_worker(self, worker_id: str, record: bytes, ttl: float) -> None:
        """Store a worker's heartbeat ``record``, forgotten ``ttl`` seconds after it.

        This default keeps the registry inside this process (the memory
        broker's); transports shared by processes store it on the server.
        """
        registry = self.__dict__.setdefault("_local_workers", {})
        registry[worker_id] = (record, time.monotonic() + ttl)

    async def _unregister_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped."""
        self.__dict__.get("_local_workers", {}).pop(worker_id, None)

    async def _worker_records(self) -> list[bytes]:
        """The records of workers whose last heartbeat has not expired."""
        registry: dict[str, tuple[bytes, float]] = self.__dict__.get("_local_workers", {})
        now = time.monotonic()
        for worker_id in [w for w, (_, expires) in registry.items() if expires <= now]:
            del registry[worker_id]
        return [record for record, _ in registry.values()]
