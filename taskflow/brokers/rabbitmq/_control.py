"""Cancellations across processes: a fanout exchange every worker listens on.

``broker.cancel(id)`` publishes the id, confirmed, to the durable fanout
exchange ``<prefix>taskflow.cancel``. Each process that follows the
cancellations (a worker's cancel watch) binds an exclusive, auto-delete,
server-named queue to it and collects the ids it receives; the watch takes
them every poll. A process that was not listening when the id was published
never sees it: that is why the broker also stores each cancellation in its
result backend when it has one, and looks it up before a message runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aio_pika

if TYPE_CHECKING:
    from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustChannel

    from taskflow.brokers.rabbitmq._connection import Link

__all__ = ["CancelFanout"]

logger = logging.getLogger("taskflow.brokers.rabbitmq")


class CancelFanout:
    """Publishes cancelled ids to the fanout exchange and collects those received."""

    def __init__(self, link: Link, exchange: str) -> None:
        self.link = link
        self.exchange_name = exchange
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._following = False
        self._received: list[str] = []

    def forget(self) -> None:
        """Drop the channel (the connection closed or is rebuilt)."""
        self._channel = self._exchange = None
        self._following = False

    async def _ensure(self) -> AbstractExchange:
        if self._exchange is None:
            channel = await self.link.channel(confirms=True)
            self._exchange = await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
            )
            self._channel = channel
        return self._exchange

    async def publish(self, message_id: str) -> None:
        """Publish ``message_id`` and wait for RabbitMQ's confirm."""
        exchange = await self._ensure()
        await exchange.publish(
            aio_pika.Message(message_id.encode(), message_id=message_id),
            routing_key="",
            mandatory=False,  # no worker listening is no error: the result backend has it
            timeout=self.link.timeout,
        )

    async def follow(self) -> None:
        """Start receiving cancellations (once; aio-pika restores it after a reconnection)."""
        if self._following:
            return
        exchange = await self._ensure()
        assert self._channel is not None
        queue = await self._channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        await queue.consume(self._on_message, no_ack=True)
        self._following = True

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._received.append(message.body.decode(errors="replace"))

    def take(self) -> list[str]:
        """The ids received since the last call."""
        received, self._received = self._received, []
        return received
