"""A fetched message in a consumer's hands: :class:`Delivery`, and what a delivery may weigh.

The worker's settler calls these methods; each settles the message once
through the transport's :class:`~taskflow._transport.Receipt`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import msgspec

from taskflow._time import utcnow

if TYPE_CHECKING:
    from taskflow._transport import Receipt
    from taskflow.broker import Broker
    from taskflow.message import Message

__all__ = ["GROWTH_ALLOWANCE", "Delivery"]

#: Bytes a message may grow by after it was sent, and still be delivered: what a
#: retry or a deferral adds (its eta, its retry count, the first attempt's trace
#: context) is a few dozen bytes, whatever the number of attempts. Sends are held
#: to ``max_message_size``, deliveries to ``max_message_size + GROWTH_ALLOWANCE``.
GROWTH_ALLOWANCE = 1024


class Delivery:
    """One message handed to a consumer, with the means to settle it.

    Attributes:
        message: The decoded message.
        queue: The queue it came from.
        settled: Whether ``ack``, ``nack``, ``retry``, ``requeue`` or ``defer`` was called.
    """

    __slots__ = ("_broker", "_receipt", "message", "queue", "settled")

    def __init__(self, broker: Broker, queue: str, message: Message[Any], receipt: Receipt) -> None:
        self._broker = broker
        self._receipt = receipt
        self.message = message
        self.queue = queue
        self.settled = False

    @property
    def delivery_count(self) -> int:
        """How many times the server has delivered this message, this time included."""
        return self._receipt.delivery_count

    @property
    def redelivered(self) -> bool:
        """Whether the message was delivered before (after a crash, shutdown or lost lease)."""
        return self._receipt.delivery_count > 1

    async def ack(self) -> None:
        """Acknowledge the message: it is done and leaves the broker."""
        if not self.settled:
            self.settled = True
            await self._receipt.ack()

    async def nack(self, reason: str) -> None:
        """Send the message to dead letters with ``reason``."""
        if not self.settled:
            self.settled = True
            await self._receipt.dead_letter(reason)

    async def retry(self, delay: float = 0.0) -> None:
        """Schedule the message again after ``delay`` seconds with its retry count raised.

        A message that grew past what a delivery accepts (options added by
        middleware at every attempt, say) goes to dead letters instead.
        """
        if not self.settled:
            eta = utcnow() + dt.timedelta(seconds=delay) if delay > 0 else None
            message = msgspec.structs.replace(
                self.message, retries=self.message.retries + 1, eta=eta
            )
            body = self._broker.codec.encode(message)
            limit = self._broker.max_message_size + GROWTH_ALLOWANCE
            if len(body) > limit:
                await self.nack(f"too_large: {len(body)} bytes after a retry, over {limit}")
                return
            self.settled = True
            await self._receipt.retry(body, max(delay, 0.0))

    async def start(self) -> bool:
        """Tell the transport the message is about to run; False: its lease is lost, skip it."""
        return await self._receipt.start()

    async def requeue(self) -> None:
        """Hand the message back unchanged (shutdown, cancellation); no retry is counted."""
        if not self.settled:
            self.settled = True
            await self._receipt.requeue()

    async def defer(self, delay: float) -> None:
        """Put the message back for ``delay`` seconds, counting neither a retry nor this delivery."""
        if not self.settled:
            self.settled = True
            await self._receipt.defer(max(delay, 0.0))
