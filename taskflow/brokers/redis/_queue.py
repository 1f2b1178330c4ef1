"""One queue as a Redis broker's consumer sees it: its held leases, its receipts, its suspects.

:class:`Queue` batches the settlements of one queue into one ``SETTLE``
script call per loop turn (through :class:`~taskflow.brokers.redis._settle.Settler`);
:class:`RedisReceipt` is the transport's handle on one fetched message, and
:class:`Quarantine` the group of suspects a consumer runs apart after a crash.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from taskflow._transport import Receipt
from taskflow.brokers.redis import _scripts
from taskflow.brokers.redis._settle import Item, Op, Settler
from taskflow.errors import BrokerError, LeaseLost

if TYPE_CHECKING:
    from taskflow.brokers.redis._broker import RedisBroker
    from taskflow.brokers.redis._keeper import LeaseTable

logger = logging.getLogger("taskflow.brokers.redis")

#: Most messages one script call fetches, sends or settles.
CHUNK = 1000
_WHY = {
    _scripts.OWNED_BY_OTHER: "another consumer holds it now",
    _scripts.NOT_OWNED: "it went back to the queue",
    _scripts.GONE: "it was settled by another consumer",
}


def to_ms(value: float) -> int:
    """Seconds as whole milliseconds, rounded up (0 for none)."""
    return math.ceil(value * 1000) if value > 0 else 0


class Queue:
    """A queue as seen by this broker: its keys, its held leases and its settle batcher."""

    def __init__(self, broker: RedisBroker, name: str, leases: LeaseTable) -> None:
        self.broker = broker
        self.name = name
        self.keys = leases.keys
        self.notify_key = broker._keys.notify(name)
        self.leases = leases
        self.settler = Settler(self._flush)
        self.outage = broker._outage(f"settling on {name}")
        #: The group of suspects this queue's consumer runs, if any.
        self.quarantine: Quarantine | None = None

    async def _flush(self, items: Sequence[Item]) -> list[int]:
        return await self.broker._settle(self, items)

    async def settle(self, receipt: RedisReceipt, op: Op, a: Any = "", b: int = 0) -> None:
        self.leases.remove(receipt)
        try:
            status = await self.settler.submit((op, receipt.wid, receipt.token, a, b))
        finally:
            if receipt.quarantine is not None:
                receipt.quarantine.release(receipt)
        if status != _scripts.APPLIED:
            raise LeaseLost(
                f"{op.verb} of message {receipt.message_id} on queue {self.name} refused: "
                f"its lease expired and {_WHY.get(status, 'it moved')}"
            )

    async def start(self, receipt: RedisReceipt) -> bool:
        """Record that the worker runs ``receipt`` now; False if its lease is gone.

        Joins the queue's settle batch: one script call for every message
        starting (and settling) in the same loop turn. If Redis cannot be
        reached the message runs all the same; a crash then returns it as
        fetched, not as a suspect.
        """
        try:
            status = await self.settler.submit((Op.START, receipt.wid, receipt.token, "", 0))
        except BrokerError as exc:
            logger.warning("could not record the start of %s (%s)", receipt.message_id, exc)
            return True
        if status == _scripts.APPLIED and not receipt.lost:
            return True
        self.leases.remove(receipt)
        if receipt.quarantine is not None:
            receipt.quarantine.release(receipt)
        logger.warning(
            "lease_lost: message %s on queue %s was taken back before it started; not running it",
            receipt.message_id,
            self.name,
        )
        return False

    async def hand_back(self, receipts: list[RedisReceipt]) -> None:
        """Return fetched but unstarted messages, without counting their delivery."""
        for r in receipts:
            self.leases.remove(r)
            if r.quarantine is not None:
                r.quarantine.release(r)
        items: list[Item] = [(Op.HAND_BACK, r.wid, r.token, "", 0) for r in receipts if not r.lost]
        try:
            for start in range(0, len(items), CHUNK):
                await self.broker._settle(self, items[start : start + CHUNK])
        except BrokerError as exc:
            logger.warning(
                "could not hand back %d prefetched message(s) of %s (%s); "
                "they return when their lease expires",
                len(items),
                self.name,
                exc,
            )


class Quarantine:
    """A group of suspects fetched together; its consumer waits until all are settled."""

    __slots__ = ("pending", "settled")

    def __init__(self, receipts: list[RedisReceipt]) -> None:
        self.pending = {id(r) for r in receipts}
        self.settled = anyio.Event()
        for r in receipts:
            r.quarantine = self

    def release(self, receipt: RedisReceipt) -> None:
        self.pending.discard(id(receipt))
        receipt.quarantine = None
        if not self.pending:
            self.settled.set()


class RedisReceipt(Receipt):
    __slots__ = ("lost", "quarantine", "queue", "rid", "token", "wid")

    def __init__(self, queue: Queue, rid: bytes, token: str, body: bytes, count: int) -> None:
        wid = _scripts.wire(rid)
        super().__init__(
            wid if isinstance(wid, str) else rid.decode("utf-8", "replace"), body, count
        )
        self.queue = queue
        self.rid = rid
        self.wid = wid
        self.token = token
        self.lost = False
        self.quarantine: Quarantine | None = None

    async def ack(self) -> None:
        await self.queue.settle(self, Op.ACK)

    async def dead_letter(self, reason: str) -> None:
        await self.queue.settle(self, Op.DEAD_LETTER, reason)

    async def retry(self, body: bytes, delay: float) -> None:
        await self.queue.settle(self, Op.RETRY, _scripts.raw_str(body), to_ms(delay))

    async def requeue(self) -> None:
        await self.queue.settle(self, Op.REQUEUE)

    async def defer(self, delay: float) -> None:
        await self.queue.settle(self, Op.DEFER, "", to_ms(delay))

    async def start(self) -> bool:
        return await self.queue.start(self)
