"""Publishing: sends, and the moves (retry, requeue, dead letter) that replace a delivery.

Every publish is persistent and, unless ``confirm_delivery=False`` for
sends, waits for the publisher confirm with mandatory routing: it returns
once RabbitMQ holds the message, raises :class:`Unroutable` when no queue
took it and :class:`PublishRejected` on a negative confirm. Moves always
wait for their confirm, since the delivery they replace is acked right
after. A delay routes the message into the ladder (see ``_topology``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from aiormq.exceptions import DeliveryError, PublishError
from pamqp import commands as spec

from taskflow._urls import mask_url
from taskflow.brokers.rabbitmq._connection import FATAL, TRANSIENT, Link
from taskflow.brokers.rabbitmq._headers import H_DELAY_LEFT, H_DELIVERIES, dead_headers
from taskflow.brokers.rabbitmq._topology import (
    MAX_UNITS,
    UNIT_MS,
    Declarer,
    QueueNames,
    delay_units,
    routing_key,
)
from taskflow.errors import BrokerError, BrokerUnavailable, PublishRejected, Unroutable

if TYPE_CHECKING:
    import aiormq
    from aio_pika.abc import AbstractRobustChannel
    from aiormq.abc import DeliveredMessage

    from taskflow._transport import Envelope

PERSISTENT = 2


class Publisher:
    """Publishes on one connection, on a confirmed channel (and an unconfirmed one if asked).

    Args:
        link: The connection to publish on.
        declarer: Declares queues, and forgets one a publish found missing.
        content_type: The codec's MIME type.
        max_priority: Priorities are clamped to ``0..max_priority``.
        confirm_delivery: Whether sends wait for confirms (moves always do).
    """

    def __init__(
        self,
        link: Link,
        declarer: Declarer,
        *,
        content_type: str,
        max_priority: int,
        confirm_delivery: bool,
    ) -> None:
        self.link = link
        self.declarer = declarer
        self.content_type = content_type
        self.max_priority = max_priority
        self.confirm_delivery = confirm_delivery
        self.confirmed: AbstractRobustChannel | None = None
        self.unconfirmed: AbstractRobustChannel | None = None
        self._raw: dict[int, aiormq.Channel] = {}

    async def open(self) -> None:
        """Open the publishing channels on the link's connection."""
        self._raw.clear()
        self.confirmed = await self.link.channel(confirms=True)
        if not self.confirm_delivery:
            self.unconfirmed = await self.link.channel(confirms=False)

    def forget(self) -> None:
        """Drop the channels (the connection is closed or gone)."""
        self.confirmed = self.unconfirmed = None
        self._raw.clear()

    def properties(
        self, *, message_id: str | None, priority: int | None, headers: dict[str, Any] | None
    ) -> spec.Basic.Properties:
        """Properties of a persistent message."""
        return spec.Basic.Properties(
            delivery_mode=PERSISTENT,
            priority=min(max(priority or 0, 0), self.max_priority),
            message_id=message_id,
            content_type=self.content_type,
            headers=headers or None,
            timestamp=None,
        )

    async def publish(
        self,
        names: QueueNames,
        body: bytes,
        *,
        message_id: str | None,
        priority: int | None,
        delay: float = 0.0,
        headers: dict[str, Any] | None = None,
        confirm: bool = True,
    ) -> None:
        """Publish ``body`` to ``names``' queue, through the delay ladder when ``delay`` > 0."""
        headers = dict(headers or {})
        units = delay_units(delay)
        if units > MAX_UNITS:
            headers[H_DELAY_LEFT] = math.ceil(delay * 1000) - MAX_UNITS * UNIT_MS
            units = MAX_UNITS
        if units:
            exchange = self.declarer.topology.exchanges[units.bit_length() - 1]
            key = routing_key(units, names.token)
        else:
            exchange, key = "", names.main
        properties = self.properties(message_id=message_id, priority=priority, headers=headers)
        await self._basic_publish(
            exchange, key, body, properties, confirm=confirm, target=names.main
        )

    async def enqueue(self, names: QueueNames, envelopes: Sequence[Envelope]) -> None:
        """Publish encoded messages (confirms pipelined); raise the first failure."""
        confirm = self.confirm_delivery
        if len(envelopes) == 1:
            e = envelopes[0]
            await self.publish(
                names, e.body, message_id=e.id, priority=e.priority, delay=e.delay, confirm=confirm
            )
            return
        results = await asyncio.gather(
            *(
                self.publish(
                    names,
                    e.body,
                    message_id=e.id,
                    priority=e.priority,
                    delay=e.delay,
                    confirm=confirm,
                )
                for e in envelopes
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def move(
        self,
        names: QueueNames,
        message: DeliveredMessage,
        *,
        body: bytes | None = None,
        delay: float = 0.0,
        deliveries: int = 0,
    ) -> None:
        """Publish a copy of ``message`` (or ``body`` in its place) back to its queue, confirmed."""
        headers: dict[str, Any] = {H_DELIVERIES: deliveries} if deliveries else {}
        properties = message.header.properties
        await self.publish(
            names,
            message.body if body is None else body,
            message_id=properties.message_id,
            priority=properties.priority,
            delay=delay,
            headers=headers,
        )

    async def bury(
        self, names: QueueNames, message: DeliveredMessage, message_id: str, reason: str
    ) -> None:
        """Publish ``message`` to the dead-letter queue with ``reason``, confirmed."""
        properties = self.properties(
            message_id=message_id,
            priority=message.header.properties.priority,
            headers=dead_headers(reason),
        )
        await self._basic_publish(
            "", names.dead, message.body, properties, confirm=True, target=names.dead
        )

    async def _basic_publish(
        self,
        exchange: str,
        key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        *,
        confirm: bool,
        target: str,
    ) -> None:
        channel = self.confirmed if confirm or self.unconfirmed is None else self.unconfirmed
        try:
            raw = self._raw.get(id(channel))
            if raw is not None and not raw.is_closed:
                # The fast path: the channel is open, no reconnection to wait for.
                try:
                    await self._on(raw, exchange, key, body, properties, channel is self.confirmed)
                    return
                except _PASS_ON:
                    raise
                except TRANSIENT:
                    pass  # the channel closed under us: wait for it below

            async def publish(raw: aiormq.abc.AbstractChannel) -> None:
                concrete = cast("aiormq.Channel", raw)
                self._raw[id(channel)] = concrete
                await self._on(concrete, exchange, key, body, properties, channel is self.confirmed)

            await self.link.call(publish, "publish a message", channel)
        except PublishError as exc:
            self.declarer.forget_target(target)
            raise Unroutable(
                f"RabbitMQ returned a message for {target!r} as unroutable ({exc}); was the "
                "queue deleted? The next send declares it again"
            ) from None
        except DeliveryError as exc:
            raise PublishRejected(f"RabbitMQ rejected a publish: {exc}") from None

    async def _on(
        self,
        raw: aiormq.Channel,
        exchange: str,
        key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        try:
            await raw.basic_publish(
                body,
                exchange=exchange,
                routing_key=key,
                properties=properties,
                mandatory=mandatory,
                timeout=self.link.timeout,
                wait=False,
            )
        except FATAL as exc:
            raise BrokerError(f"RabbitMQ refused a publish: {self.link.describe(exc)}") from None
        except TimeoutError:
            raise BrokerUnavailable(
                f"no publisher confirm within {self.link.timeout} s: RabbitMQ at "
                f"{mask_url(self.link.url)} is unreachable or blocked"
            ) from None


# Raised by a publish on an open channel and passed on as they are (no retry).
_PASS_ON = (BrokerError, DeliveryError)
