"""Inspection and management: counts, dead letters, requeueing and purging.

Counts come from passive queue declarations, read in the order messages
flow (dead letters, the ladder from the top, the main queue), so a message
moving along is seen at least once. Dead letters are read with
``basic.get`` on a short-lived channel and given back unchanged, in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from pamqp import commands as spec

from taskflow._inspection import BrowseRecord, State, local_identity
from taskflow._transport import DeadRecord, QueueStats
from taskflow.brokers.rabbitmq._headers import dead_record, prior_deliveries

if TYPE_CHECKING:
    from aiormq.abc import AbstractChannel, DeliveredMessage

    from taskflow.brokers.rabbitmq._connection import Link
    from taskflow.brokers.rabbitmq._consumer import Deliveries
    from taskflow.brokers.rabbitmq._management import Management, Reading
    from taskflow.brokers.rabbitmq._publisher import Publisher
    from taskflow.brokers.rabbitmq._topology import Declarer, QueueNames, QueueType

QUORUM_SETTLE = 0.1
#: What RabbitMQ cannot show: it has no read of a queue that leaves it untouched.
UNBROWSABLE = (
    "RabbitMQ cannot list {state} messages without consuming them; only messages "
    "in flight in this process are listed"
)
# Two statistics intervals (5 s each by default) and a margin: past this, a
# management reading that never became fresh is taken as it is.
STATS_LAG = 12.0


@dataclass(frozen=True)
class View:
    """How the last count of a queue's in-flight messages was made."""

    exact: bool  # every consumer of the queue is in this process (or no API to ask)
    reading: Reading | None


def fresh(reading: Reading | None, since: float | None) -> bool:
    """Whether ``reading`` was emitted after the server time ``since`` (whole seconds)."""
    if reading is None or reading.idle_since is None or since is None:
        return False
    return reading.idle_since >= since + 1


class Inspector:
    """Reads and manages the queues of one broker through its management channel."""

    def __init__(
        self,
        link: Link,
        declarer: Declarer,
        publisher: Publisher,
        deliveries: Deliveries,
        queue_type: QueueType,
        management: Management | None = None,
    ) -> None:
        self.link = link
        self.declarer = declarer
        self.publisher = publisher
        self.deliveries = deliveries
        self.queue_type = queue_type
        self.management = management
        self.views: dict[str, View] = {}

    async def stats(self, queue: str) -> QueueStats:
        """Ready, delayed, in-flight and dead counts of ``queue``."""
        names = await self.declarer.ensure(queue)
        stats = await self._read_stats(queue, names)
        if self.queue_type == "quorum" and not any(stats[:3]):
            # Quorum queues dead-letter (the delay ladder's last step) through
            # a Raft round: a message between two queues is counted by neither
            # for a few milliseconds. A second look after that settles it.
            await anyio.sleep(QUORUM_SETTLE)
            stats = await self._read_stats(queue, names)
        return stats

    async def _read_stats(self, queue: str, names: QueueNames) -> QueueStats:
        before = self.deliveries.in_flight(queue)
        order = (names.dead, *reversed(names.delays), names.main)

        async def read(channel: AbstractChannel) -> list[tuple[int, int]]:
            replies = [await channel.queue_declare(name, passive=True) for name in order]
            return [(r.message_count or 0, r.consumer_count or 0) for r in replies]

        counts = await self.link.call(read, "read queue counts")
        dead, ready = counts[0][0], counts[-1][0]
        delayed = sum(count for count, _ in counts[1:-1])
        if ready == 0 and delayed == 0 and before == 0:
            # Deliveries dispatched before the count above may still be on
            # the wire to a consumer of this process: a round trip on each
            # consumer's channel brings them in first.
            await self.deliveries.barrier(queue)
        in_flight = max(before, self.deliveries.in_flight(queue))
        view = await self._view(queue, names.main, counts[-1][1])
        self.views[queue] = view
        if view.reading is not None:
            in_flight = max(in_flight, view.reading.unacked)
        return QueueStats(ready, delayed, in_flight, dead)

    async def _view(self, queue: str, main: str, consumers: int) -> View:
        local = len(self.deliveries.consumers.get(queue, ()))
        if self.management is None or local == consumers:
            return View(exact=True, reading=None)
        reading = await self.management.read(main)
        return View(exact=not self.management.reachable, reading=reading)

    async def drain(self, queue: str) -> None:
        """Return once ``queue`` has nothing ready, delayed or unacked anywhere.

        When another process consumes, its unacked count is known only from
        the management API's statistics, which lag: a zero counts once the
        queue emitted it on going idle after ready and delayed were first
        read as 0 (so after every delivery then running was settled), or
        after ``STATS_LAG`` seconds of zeros, for a queue that stays idle.
        """
        interval = 0.005
        empty_since: float | None = None  # server clock: ready and delayed first read 0
        zero_since: float | None = None  # monotonic: everything first read 0
        while True:
            s = await self.stats(queue)
            view = self.views.get(queue, View(exact=True, reading=None))
            if s.ready or s.delayed:
                empty_since = zero_since = None
            elif empty_since is None and view.reading is not None:
                empty_since = view.reading.server_now
            if s.ready or s.delayed or s.in_flight:
                zero_since = None
            elif view.exact:
                return
            else:
                zero_since = time.monotonic() if zero_since is None else zero_since
                if fresh(view.reading, empty_since):
                    return
                if time.monotonic() - zero_since >= STATS_LAG:
                    return
            await anyio.sleep(interval)
            interval = min(interval * 1.5, 0.1)

    async def dead_letters(self, queue: str, limit: int) -> list[DeadRecord]:
        """Up to ``limit`` dead letters, oldest first, left in place."""
        names = await self.declarer.ensure(queue)

        async def read(channel: AbstractChannel) -> list[DeadRecord]:
            records: list[DeadRecord] = []
            last = 0
            try:
                while len(records) < limit:
                    got = await channel.basic_get(names.dead, no_ack=False)
                    if not isinstance(got.delivery, spec.Basic.GetOk):
                        break
                    last = got.delivery.delivery_tag or last
                    records.append(dead_record(got))
            finally:
                if last and not channel.is_closed:
                    await channel.basic_nack(last, multiple=True, requeue=True)
            return records

        return await self.link.on_fresh_channel(read, "read dead letters")

    async def requeue_dead(self, queue: str, ids: list[str] | None) -> int:
        """Move dead letters (all, or those with ``ids``) back to the queue; return how many."""
        names = await self.declarer.ensure(queue)
        wanted = None if ids is None else set(ids)

        async def move(channel: AbstractChannel) -> int:
            total = (await channel.queue_declare(names.dead, passive=True)).message_count or 0
            moved = 0
            keep: list[int] = []
            try:
                for _ in range(total):
                    if wanted is not None and not wanted:
                        break
                    got = await channel.basic_get(names.dead, no_ack=False)
                    if not isinstance(got.delivery, spec.Basic.GetOk):
                        break
                    tag = got.delivery.delivery_tag or 0
                    message_id = got.header.properties.message_id
                    if wanted is not None and message_id not in wanted:
                        keep.append(tag)
                        continue
                    await self.publisher.publish(
                        names,
                        got.body,
                        message_id=message_id,
                        priority=got.header.properties.priority,
                    )
                    await channel.basic_ack(tag)
                    moved += 1
                    if wanted is not None and message_id is not None:
                        wanted.discard(message_id)
            finally:
                if not channel.is_closed:
                    for tag in keep:
                        await channel.basic_nack(tag, requeue=True)
            return moved

        return await self.link.on_fresh_channel(move, "requeue dead letters")

    async def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue``; return how many."""
        names = await self.declarer.ensure(queue)

        async def purge(channel: AbstractChannel) -> int:
            total = 0
            for name in (*reversed(names.delays), names.main):
                total += (await channel.queue_purge(name)).message_count or 0
            return total

        return await self.link.call(purge, "purge a queue")

    async def purge_dead(self, queue: str) -> int:
        """Delete the dead letters of ``queue``; return how many."""
        names = await self.declarer.ensure(queue)

        async def purge(channel: AbstractChannel) -> int:
            return (await channel.queue_purge(names.dead)).message_count or 0

        return await self.link.call(purge, "purge dead letters")

    # -- browsing: only what this process holds ---------------------------

    def browse(self, queue: str, state: State, limit: int, offset: int) -> list[BrowseRecord]:
        """In-flight messages of ``queue`` held by this process's consumers, oldest first.

        Raises:
            NotImplementedError: for any other state.
        """
        if state != "in_flight":
            raise NotImplementedError(UNBROWSABLE.format(state=state))
        self.deliveries.in_flight(queue)  # drops those of closed channels
        held = list(self.deliveries.held.get(queue, {}).values())
        return [self._record(m) for m in held[offset : offset + limit]]

    def locate(self, queue: str, message_id: str) -> BrowseRecord | None:
        """The message ``message_id`` if this process holds it in flight."""
        self.deliveries.in_flight(queue)
        for message in self.deliveries.held.get(queue, {}).values():
            if message.header.properties.message_id == message_id:
                return self._record(message)
        return None

    def _record(self, message: DeliveredMessage) -> BrowseRecord:
        host, pid = local_identity()
        return BrowseRecord(
            message.header.properties.message_id or "",
            message.body,
            "in_flight",
            delivery_count=prior_deliveries(message, self.queue_type) + 1,
            lease_owner=f"{host}:{pid}",
        )
