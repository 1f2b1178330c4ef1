"""Consumers and receipts of the RabbitMQ broker.

A :class:`Consumer` works with what :class:`Plumbing` gives it (its
connection, the declarer, the publisher for moves, and the
:class:`Deliveries` book that counts what this process holds); it knows
nothing of the broker object, actors or middleware.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)

from taskflow._retrying import backoff
from taskflow._transport import Receipt
from taskflow.brokers.rabbitmq._acks import ChannelAcks
from taskflow.brokers.rabbitmq._headers import delay_left, new_message_id, prior_deliveries
from taskflow.errors import BrokerError, LeaseLost

if TYPE_CHECKING:
    from aio_pika.abc import AbstractRobustChannel
    from aiormq.abc import AbstractChannel, DeliveredMessage
    from pamqp import commands as spec

    from taskflow.brokers.rabbitmq._connection import Link
    from taskflow.brokers.rabbitmq._publisher import Publisher
    from taskflow.brokers.rabbitmq._topology import Declarer, QueueNames, QueueType

logger = logging.getLogger("taskflow.brokers.rabbitmq")

QUORUM_ACK_GRACE = 0.5

_SETTLE_ERRORS = (ChannelInvalidStateError, AMQPError, ConnectionError, OSError)
# aio-pika raises RuntimeError for a connection that is being restored.
_RETRY = (*_SETTLE_ERRORS, RuntimeError)
_FATAL = (ChannelAccessRefused, ChannelNotFoundEntity, ChannelPreconditionFailed)


class Deliveries:
    """What this process holds: deliveries per queue, live consumers, the time of the last ack."""

    def __init__(self, queue_type: QueueType) -> None:
        self.queue_type = queue_type
        self.held: dict[str, dict[int, DeliveredMessage]] = {}
        self.consumers: dict[str, set[Consumer]] = {}
        self.last_ack = -float("inf")

    def hold(self, queue: str, message: DeliveredMessage) -> None:
        """Count ``message`` as in flight in this process."""
        self.held.setdefault(queue, {})[id(message)] = message

    def release(self, queue: str, message: DeliveredMessage) -> None:
        """Stop counting ``message`` as in flight."""
        held = self.held.get(queue)
        if held is not None:
            held.pop(id(message), None)

    def in_flight(self, queue: str) -> int:
        """Deliveries of ``queue`` this process holds on channels still open."""
        held = self.held.get(queue)
        if not held:
            return 0
        for key, message in list(held.items()):
            if not Consumer.alive(message):
                del held[key]
        return len(held)

    async def barrier(self, queue: str) -> None:
        """A round trip on each consumer's channel of ``queue``, so earlier deliveries are in."""
        for consumer in list(self.consumers.get(queue, ())):
            await consumer.barrier()

    def acked(self) -> None:
        """Note that a delivery was just settled (see :meth:`settle_grace`)."""
        self.last_ack = time.monotonic()

    async def settle_grace(self) -> None:
        """Before closing a channel, give recent acks on quorum queues time to apply.

        RabbitMQ 3.10 sends a quorum queue's settlements in a pipeline that
        holds back commands while many are pending; closing the channel right
        after a burst of acks can drop the held ones, and those messages come
        back as redeliveries.
        """
        if self.queue_type == "quorum":
            remaining = self.last_ack + QUORUM_ACK_GRACE - time.monotonic()
            if remaining > 0:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(remaining)


@dataclass(frozen=True, slots=True)
class Plumbing:
    """What a consumer works with."""

    link: Link  # the connection it consumes on
    declarer: Declarer
    publisher: Publisher  # for moves: retries, requeues, dead letters, hand-backs
    deliveries: Deliveries

    @property
    def queue_type(self) -> QueueType:
        """Classic or quorum."""
        return self.declarer.topology.queue_type


class Consumer:
    """``basic.consume`` on a robust channel of its own, with its prefetch buffer.

    RabbitMQ's prefetch (``basic_qos``) counts every unacked delivery, also
    those handed out and still being processed, while taskflow's ``prefetch``
    bounds only what waits in the buffer. So when everything a consumer
    received is handed out and unsettled and the buffer runs dry, a new
    consumer (with a fresh prefetch window) replaces it on the same channel;
    the old one is cancelled, and its deliveries stay valid until settled.

    That happens only while no ack has gone out for the old consumer (and
    acks wait while it is being cancelled): an ack gives it credit, and a
    message RabbitMQ sends on that credit while the cancel is under way is
    returned to the queue as a redelivery. Once a consumer's messages are
    being acked, its window refills as they finish.

    The consumer runs on the AMQP channel under an aio-pika robust channel
    (cheaper per delivery than aio-pika's message objects). aio-pika
    restores the channel and its QoS after a reconnection, and the consumer
    subscribes again; deliveries still buffered from the dead channel are
    dropped (RabbitMQ requeued them).
    """

    def __init__(
        self,
        plumbing: Plumbing,
        queue: str,
        names: QueueNames,
        prefetch: int,
        arguments: dict[str, Any],
    ) -> None:
        self.plumbing = plumbing
        self.queue = queue
        self.names = names
        self.prefetch = prefetch
        self.arguments = arguments
        self.buffer: deque[DeliveredMessage] = deque()
        self.wakeup = asyncio.Event()
        self.channel: AbstractRobustChannel | None = None
        self.raw: AbstractChannel | None = None  # the AMQP channel of the active consumer
        self.tag: str | None = None
        self.unsettled: Counter[str] = Counter()  # per consumer tag
        self.outstanding = 0  # handed out, not settled
        self.generations = 0
        self.stopped = False
        self._acks: dict[int, ChannelAcks] = {}
        self._acked_tags: set[str] = set()  # consumers an ack went out for
        self._renewed = asyncio.Event()
        self._renewed.set()
        self._republish_failures = 0  # in a row

    @staticmethod
    def alive(message: DeliveredMessage) -> bool:
        """Whether ``message``'s channel is still open (so it can still be settled)."""
        return not message.channel.is_closed

    async def start(self) -> None:
        """Open the channel, set the prefetch and start consuming.

        Retries while the connection is being restored, for up to the
        link's ``timeout`` (the broker's ``send_timeout``).
        """
        deadline = anyio.current_time() + self.plumbing.link.timeout
        attempt = 0
        while True:
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0.001)):
                    await self._open()
                return
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await self._close_channel()
                retry = isinstance(exc, _RETRY) and not isinstance(exc, _FATAL)
                pause = backoff(attempt)
                attempt += 1
                if not retry or anyio.current_time() + pause >= deadline:
                    raise
                await anyio.sleep(pause)

    async def _open(self) -> None:
        connection = self.plumbing.link.connection
        await connection.connected.wait()
        self.channel = await connection.channel(publisher_confirms=False)
        self.channel.reopen_callbacks.add(self._on_reopen)
        await self.channel.set_qos(prefetch_count=self.prefetch)
        await self._subscribe()

    async def _subscribe(self) -> None:
        assert self.channel is not None
        raw = await self.channel.get_underlay_channel()
        if raw is not self.raw:
            await raw.queue_declare(
                self.names.main,
                durable=True,
                arguments=self.plumbing.declarer.topology.main_arguments(self.names),
            )
            raw.on_consumer_cancel_callbacks.add(self._on_cancelled)
        ok = await raw.basic_consume(
            self.names.main, self._on_message, arguments=self.arguments or None
        )
        self.raw, self.tag = raw, ok.consumer_tag
        self.generations += 1

    def _on_reopen(self, _channel: Any) -> None:
        # The channel (or the whole connection) closed and aio-pika reopened
        # it: consume again on the new AMQP channel.
        self.tag = None
        self.wakeup.set()

    async def _on_cancelled(self, frame: spec.Basic.Cancel) -> None:
        # RabbitMQ cancelled the consumer (its queue was deleted): declare
        # the queue again and consume again.
        if frame.consumer_tag == self.tag:
            self.tag = None
            self.raw = None
            self.plumbing.declarer.forget(self.queue)
            self.wakeup.set()

    async def _on_message(self, message: DeliveredMessage) -> None:
        channel = message.channel
        if channel.is_closed:
            return  # its channel is gone already: RabbitMQ requeued it
        self._tracker(channel).add(message.delivery_tag or 0)
        self.buffer.append(message)
        self.unsettled[message.consumer_tag or ""] += 1
        self.plumbing.deliveries.hold(self.queue, message)
        self.wakeup.set()

    def release(self, message: DeliveredMessage) -> None:
        """Stop counting ``message`` (settled, handed back or lost)."""
        tag = message.consumer_tag or ""
        self.unsettled[tag] -= 1
        if self.unsettled[tag] <= 0:
            del self.unsettled[tag]
        self.plumbing.deliveries.release(self.queue, message)

    def _tracker(self, channel: AbstractChannel) -> ChannelAcks:
        acks = self._acks.get(id(channel))
        if acks is None or acks.channel is not channel:
            for key in [k for k, a in self._acks.items() if a.channel.is_closed]:
                del self._acks[key]
            acks = self._acks[id(channel)] = ChannelAcks(channel, self.plumbing.link.timeout)
        return acks

    async def ack(self, message: DeliveredMessage) -> None:
        """Ack ``message`` together with the other acks of this event-loop turn.

        Returns once the ack is written to the connection.

        Raises:
            ChannelInvalidStateError: The delivery's channel has closed (before
                or while the ack was written), or it was settled already.
        """
        if message.channel.is_closed:
            raise ChannelInvalidStateError("the delivery's channel has closed")
        if not self._renewed.is_set():
            await self._renewed.wait()
        written = self._tracker(message.channel).settle(message.delivery_tag or 0)
        self._acked_tags.add(message.consumer_tag or "")
        await asyncio.shield(written)

    async def flush(self) -> None:
        """Wait until every settlement asked for so far is written."""
        for acks in list(self._acks.values()):
            await acks.drain()

    async def requeue_now(self, message: DeliveredMessage) -> None:
        """Give ``message`` back to RabbitMQ at once (it counts as a redelivery)."""
        try:
            written = self._tracker(message.channel).settle(message.delivery_tag or 0, requeue=True)
            # A nack gives the consumer credit, as an ack does.
            self._acked_tags.add(message.consumer_tag or "")
            await asyncio.shield(written)
        except _SETTLE_ERRORS:
            pass

    async def next(self) -> DeliveredMessage:
        """The next live delivery, waiting for one."""
        while True:
            while self.buffer:
                message = self.buffer.popleft()
                if self.alive(message):
                    return message
                self.release(message)
            self.wakeup.clear()
            tag = self.tag
            if tag is None and not self.stopped:
                await self._resubscribe()
                continue
            if (
                tag is not None
                and tag not in self._acked_tags
                and self.unsettled[tag] >= self.prefetch
            ):
                await self._renew(tag)
            await self.wakeup.wait()

    async def _resubscribe(self) -> None:
        """Consume again after a renewal failed half-way (the connection dropped)."""
        try:
            with anyio.fail_after(self.plumbing.link.timeout):
                await self.plumbing.declarer.ensure(self.queue)
                if self.channel is not None:
                    await self.channel.ready()
                await self._subscribe()
        except (TimeoutError, *_RETRY) as exc:
            logger.debug("could not consume %s again: %s", self.queue, exc)
            await anyio.sleep(backoff(4))

    async def _renew(self, old: str) -> None:
        """Replace the consumer whose prefetch window is full of unsettled deliveries."""
        self._renewed.clear()
        try:
            with anyio.fail_after(self.plumbing.link.timeout):
                await self.flush()
                if self.raw is not None and not self.raw.is_closed:
                    await self.raw.basic_cancel(old)
                self.tag = None
                await self._subscribe()
        except (TimeoutError, *_RETRY) as exc:
            logger.debug("could not renew the consumer of %s: %s", self.queue, exc)
        finally:
            self._renewed.set()

    async def accept(self, message: DeliveredMessage) -> _Receipt | None:
        """Turn a delivery into a receipt, or settle it here and return ``None``.

        Classic-queue redeliveries are republished with their count raised;
        messages whose delay outlasts one pass through the ladder go round again.
        """
        plumbing = self.plumbing
        prior = prior_deliveries(message, plumbing.queue_type)
        properties = message.header.properties
        left = delay_left(message)
        redelivered = plumbing.queue_type == "classic" and message.redelivered
        if not (left or redelivered):
            self.outstanding += 1
            message_id = properties.message_id or new_message_id()
            return _Receipt(self, message, message_id, prior + 1)
        try:
            await plumbing.publisher.move(
                self.names,
                message,
                delay=left / 1000 if left else 0.0,
                deliveries=prior,
            )
            await self.ack(message)
        except (*_SETTLE_ERRORS, BrokerError) as exc:
            pause = backoff(self._republish_failures, base=0.5, cap=5.0)
            logger.warning(
                "could not republish message %s on %s (%s); handing it back to RabbitMQ in %.1f s",
                properties.message_id,
                self.queue,
                plumbing.link.describe(exc),
                pause,
            )
            self._republish_failures += 1
            # Never left unacked until the channel closes (that would hold a
            # prefetch slot, and wedge a consumer with prefetch 1): RabbitMQ
            # gets it back after a pause, and it comes round again.
            _spawn(self._hand_back_later(message, pause))
            return None
        self._republish_failures = 0
        plumbing.deliveries.acked()
        self.release(message)
        return None

    async def _hand_back_later(self, message: DeliveredMessage, pause: float) -> None:
        try:
            await anyio.sleep(pause)
            if self.alive(message):
                await self.requeue_now(message)
        finally:
            self.release(message)

    async def barrier(self) -> None:
        """A round trip on this consumer's channel, after which earlier deliveries are buffered."""
        raw = self.raw
        if raw is None or raw.is_closed:
            return
        try:
            with anyio.fail_after(self.plumbing.link.timeout):
                await raw.queue_declare(self.names.main, passive=True)
        except (TimeoutError, *_SETTLE_ERRORS):
            return
        for _ in range(4):
            await asyncio.sleep(0)

    async def stop(self) -> None:
        """Cancel the consumer and hand back what was fetched but not handed out."""
        self.stopped = True
        if self.raw is not None and self.tag is not None and not self.raw.is_closed:
            try:
                await self.raw.basic_cancel(self.tag)
            except _SETTLE_ERRORS:
                pass
        returning, self.buffer = list(self.buffer), deque()
        await asyncio.gather(*(self._hand_back(m) for m in returning))
        if self.outstanding <= 0:
            await self._close_channel()

    async def _hand_back(self, message: DeliveredMessage) -> None:
        plumbing = self.plumbing
        try:
            if not self.alive(message):
                return
            # Not started, so not counted: the copy carries the count so far.
            await plumbing.publisher.move(
                self.names, message, deliveries=prior_deliveries(message, plumbing.queue_type)
            )
            await self.ack(message)
            plumbing.deliveries.acked()
        except (*_SETTLE_ERRORS, BrokerError):
            if self.alive(message):
                await self.requeue_now(message)
        finally:
            self.release(message)

    async def _close_channel(self) -> None:
        await self.flush()
        channel, self.channel = self.channel, None
        if channel is not None and not channel.is_closed:
            await self.plumbing.deliveries.settle_grace()
            try:
                await channel.close()
            except _SETTLE_ERRORS:
                pass

    def settled(self, message: DeliveredMessage) -> None:
        """Bookkeeping after a handed-out delivery was settled (or found lost)."""
        self.release(message)
        self.plumbing.deliveries.acked()
        self.outstanding -= 1
        if self.stopped and self.outstanding <= 0 and self.channel is not None:
            _spawn(self._close_channel())


_BACKGROUND: set[asyncio.Task[None]] = set()


def _spawn(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` in the background, holding a reference until it is done."""
    task = asyncio.get_running_loop().create_task(coroutine)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


class _Receipt(Receipt):
    __slots__ = ("_consumer", "_done", "_message")

    def __init__(
        self,
        consumer: Consumer,
        message: DeliveredMessage,
        message_id: str,
        delivery_count: int,
    ) -> None:
        super().__init__(message_id, message.body, delivery_count)
        self._consumer = consumer
        self._message = message
        self._done = False

    def _lost(self) -> LeaseLost:
        self._finish()
        return LeaseLost(
            f"message {self.message_id} was delivered on a RabbitMQ channel that has closed "
            "since; RabbitMQ requeued it"
        )

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._consumer.settled(self._message)

    def _check(self) -> None:
        if self._done:
            raise LeaseLost(f"message {self.message_id} was already settled")
        if not Consumer.alive(self._message):
            raise self._lost()

    async def ack(self) -> None:
        self._check()
        try:
            await self._consumer.ack(self._message)
        except _SETTLE_ERRORS:
            raise self._lost() from None
        self._finish()

    async def _replace(self, publish: Callable[[], Awaitable[None]]) -> None:
        """Publish the replacement (confirmed), then ack this delivery."""
        self._check()
        try:
            await publish()
        except BaseException:
            # Nothing was stored: give the message back now rather than
            # holding it until the channel closes.
            with anyio.CancelScope(shield=True):
                if Consumer.alive(self._message):
                    await self._consumer.requeue_now(self._message)
                self._finish()
            raise
        await self.ack()

    async def dead_letter(self, reason: str) -> None:
        consumer = self._consumer
        await self._replace(
            lambda: consumer.plumbing.publisher.bury(
                consumer.names, self._message, self.message_id, reason
            )
        )

    async def retry(self, body: bytes, delay: float) -> None:
        consumer = self._consumer
        await self._replace(
            lambda: consumer.plumbing.publisher.move(
                consumer.names, self._message, body=body, delay=delay
            )
        )

    async def requeue(self) -> None:
        consumer = self._consumer
        await self._replace(
            lambda: consumer.plumbing.publisher.move(
                consumer.names, self._message, deliveries=self.delivery_count
            )
        )

    async def defer(self, delay: float) -> None:
        consumer = self._consumer
        await self._replace(
            lambda: consumer.plumbing.publisher.move(
                consumer.names, self._message, delay=delay, deliveries=self.delivery_count - 1
            )
        )
