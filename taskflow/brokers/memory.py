"""MemoryBroker: the whole broker contract inside one process, for tests.

It keeps messages in memory, so it is neither durable nor shared between
processes, but it behaves like the real brokers in everything else: delays,
priorities, delivery counts and limits, dead letters with a TTL, stats and
join. It is the reference implementation of the contract suite.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Self

import anyio

from taskflow._inspection import BrowseRecord, State
from taskflow._transport import DeadRecord, Envelope, QueueStats, Receipt
from taskflow.broker import Broker
from taskflow.results import ResultBackend
from taskflow.results.memory import MemoryResults


class _Stored:
    __slots__ = ("body", "deliveries", "priority")

    def __init__(self, body: bytes, priority: int) -> None:
        self.body = body
        self.priority = priority
        self.deliveries = 0


_OWNER = "memory"  # the one consumer of an in-process broker holds every lease


class _Queue:
    def __init__(self) -> None:
        self.messages: dict[str, _Stored] = {}
        self.ready: list[tuple[int, int, str]] = []  # (-priority, seq, id)
        self.delayed: list[tuple[float, int, str]] = []  # (due, seq, id)
        self.in_flight: set[str] = set()
        self.dead: OrderedDict[str, DeadRecord] = OrderedDict()
        self.wakeup: anyio.Event | None = None


class MemoryBroker(Broker):
    """An in-process broker for tests and examples.

    Args:
        **options: Passed to :class:`taskflow.Broker`.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build from ``memory://``."""
        return cls(**options)

    def _default_results(self) -> ResultBackend:
        return MemoryResults()

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue()
        return q

    # -- state changes ------------------------------------------------------

    def _push(self, q: _Queue, message_id: str, delay: float) -> None:
        stored = q.messages[message_id]
        if delay > 0:
            heapq.heappush(q.delayed, (time.monotonic() + delay, next(self._seq), message_id))
        else:
            heapq.heappush(q.ready, (-stored.priority, next(self._seq), message_id))
            if q.wakeup is not None:
                q.wakeup.set()
                q.wakeup = None

    def _promote(self, q: _Queue) -> float | None:
        """Move due delayed messages to ready; return seconds until the next is due."""
        now = time.monotonic()
        while q.delayed and q.delayed[0][0] <= now:
            _, _, message_id = heapq.heappop(q.delayed)
            if message_id in q.messages:
                self._push(q, message_id, 0)
        return q.delayed[0][0] - now if q.delayed else None

    def _take(self, q: _Queue, limit: int) -> list[Receipt]:
        receipts: list[Receipt] = []
        while q.ready and len(receipts) < limit:
            _, _, message_id = heapq.heappop(q.ready)
            stored = q.messages.get(message_id)
            if stored is None:  # purged
                continue
            stored.deliveries += 1
            q.in_flight.add(message_id)
            receipts.append(_MemoryReceipt(self, q, message_id, stored.body, stored.deliveries))
        return receipts

    def _settle(self, q: _Queue, message_id: str) -> _Stored | None:
        if message_id not in q.in_flight:
            return None
        q.in_flight.discard(message_id)
        return q.messages.pop(message_id, None)

    def _expire_dead(self, q: _Queue) -> None:
        horizon = time.time() - self.dead_letter_ttl
        while q.dead:
            record = next(iter(q.dead.values()))
            if record.dead_at > horizon:
                break
            q.dead.popitem(last=False)

    # -- hooks --------------------------------------------------------------

    async def _connect(self) -> None:
        for q in self._queues.values():
            q.wakeup = None  # events belong to the loop that made them

    async def _close(self) -> None:
        pass

    async def _enqueue(self, queue: str, envelopes: Sequence[Envelope]) -> None:
        q = self._queue(queue)
        for e in envelopes:
            q.messages[e.id] = _Stored(e.body, e.priority)
            self._push(q, e.id, e.delay)

    async def _consume(
        self, queue: str, prefetch: int, time_limit: float | None
    ) -> AsyncGenerator[Receipt, None]:
        q = self._queue(queue)
        batch: list[Receipt] = []
        try:
            while True:
                next_due = self._promote(q)
                batch = self._take(q, prefetch)
                if not batch:
                    if q.wakeup is None:
                        q.wakeup = anyio.Event()
                    with anyio.move_on_after(next_due if next_due is not None else 1.0):
                        await q.wakeup.wait()
                    continue
                batch.reverse()
                while batch:
                    yield batch.pop()
                await anyio.lowlevel.checkpoint()
        finally:
            for receipt in batch:
                await receipt.requeue()

    async def _stats(self, queue: str) -> QueueStats:
        q = self._queue(queue)
        self._promote(q)
        self._expire_dead(q)
        # Purging clears the heaps wholesale, so every entry in them is live.
        return QueueStats(len(q.ready), len(q.delayed), len(q.in_flight), len(q.dead))

    async def _dead_letters(self, queue: str, limit: int) -> list[DeadRecord]:
        q = self._queue(queue)
        self._expire_dead(q)
        return list(itertools.islice(q.dead.values(), limit))

    async def _requeue_dead(self, queue: str, ids: list[str] | None) -> int:
        q = self._queue(queue)
        self._expire_dead(q)
        chosen = list(q.dead) if ids is None else [i for i in ids if i in q.dead]
        for message_id in chosen:
            record = q.dead.pop(message_id)
            q.messages[message_id] = _Stored(record.body, 0)
            self._push(q, message_id, 0)
        return len(chosen)

    async def _purge(self, queue: str) -> int:
        q = self._queue(queue)
        waiting = [i for i in q.messages if i not in q.in_flight]
        for message_id in waiting:
            del q.messages[message_id]
        q.ready.clear()
        q.delayed.clear()
        return len(waiting)

    async def _purge_dead(self, queue: str) -> int:
        q = self._queue(queue)
        count = len(q.dead)
        q.dead.clear()
        return count

    async def _known_queues(self) -> list[str]:
        return list(self._queues)

    async def _browse(
        self, queue: str, state: State, limit: int, offset: int
    ) -> list[BrowseRecord]:
        q = self._queue(queue)
        self._promote(q)
        self._expire_dead(q)
        ids: list[str]
        if state == "ready":
            ids = [i for _, _, i in sorted(q.ready) if i in q.messages and i not in q.in_flight]
        elif state == "delayed":
            ids = [i for _, _, i in sorted(q.delayed) if i in q.messages]
        elif state == "in_flight":
            ids = sorted(q.in_flight)
        else:
            ids = list(reversed(q.dead))
        found = (self._record(q, i) for i in ids[offset : offset + limit])
        return [r for r in found if r is not None]

    async def _locate(self, queue: str, message_id: str) -> BrowseRecord | None:
        q = self._queues.get(queue)
        return None if q is None else self._record(q, message_id)

    def _record(self, q: _Queue, message_id: str) -> BrowseRecord | None:
        dead = q.dead.get(message_id)
        if dead is not None:
            return BrowseRecord(
                message_id, dead.body, "dead", reason=dead.reason, dead_at=dead.dead_at
            )
        stored = q.messages.get(message_id)
        if stored is None:
            return None
        if message_id in q.in_flight:
            return BrowseRecord(
                message_id, stored.body, "in_flight", None, stored.deliveries, _OWNER
            )
        due = next((d for d, _, i in q.delayed if i == message_id), None)
        if due is not None:
            eta = time.time() + due - time.monotonic()
            return BrowseRecord(message_id, stored.body, "delayed", eta, stored.deliveries)
        return BrowseRecord(message_id, stored.body, "ready", None, stored.deliveries)


class _MemoryReceipt(Receipt):
    __slots__ = ("_broker", "_q")

    def __init__(
        self, broker: MemoryBroker, q: _Queue, message_id: str, body: bytes, deliveries: int
    ) -> None:
        super().__init__(message_id, body, deliveries)
        self._broker = broker
        self._q = q

    async def ack(self) -> None:
        self._broker._settle(self._q, self.message_id)

    async def dead_letter(self, reason: str) -> None:
        if self._broker._settle(self._q, self.message_id) is not None:
            self._q.dead[self.message_id] = DeadRecord(
                self.message_id, self.body, reason, time.time()
            )

    async def retry(self, body: bytes, delay: float) -> None:
        stored = self._broker._settle(self._q, self.message_id)
        if stored is not None:
            self._q.messages[self.message_id] = _Stored(body, stored.priority)
            self._broker._push(self._q, self.message_id, delay)

    async def requeue(self) -> None:
        if self.message_id in self._q.in_flight:
            self._q.in_flight.discard(self.message_id)
            self._broker._push(self._q, self.message_id, 0)

    async def defer(self, delay: float) -> None:
        if self.message_id in self._q.in_flight:
            self._q.in_flight.discard(self.message_id)
            self._q.messages[self.message_id].deliveries -= 1
            self._broker._push(self._q, self.message_id, delay)
