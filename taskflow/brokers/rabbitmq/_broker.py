"""The RabbitMQ broker: connections, topology, publishing and inspection."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast
from urllib.parse import urlsplit

import aio_pika
import aiormq
import anyio
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ChannelLockedResource,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from pamqp import commands as spec

from taskflow._urls import mask_url
from taskflow.broker import Broker, DeadRecord, Envelope, QueueStats, Receipt, seconds
from taskflow.brokers.rabbitmq._consumer import (
    H_DEAD_AT,
    H_DELAY_LEFT,
    H_DELIVERIES,
    H_REASON,
    Consumer,
    dead_record,
)
from taskflow.brokers.rabbitmq._topology import (
    LEVELS,
    MAX_UNITS,
    UNIT_MS,
    QueueNames,
    QueueType,
    Topology,
    delay_units,
    routing_key,
)
from taskflow.errors import BrokerError, BrokerUnavailable

if TYPE_CHECKING:
    import ssl

    from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
    from aiormq.abc import DeliveredMessage

    from taskflow.results import ResultBackend

T = TypeVar("T")

logger = logging.getLogger("taskflow.brokers.rabbitmq")

PERSISTENT = 2
RABBITMQ_DEFAULT_CONSUMER_TIMEOUT = 1800.0
QUORUM_SETTLE = 0.1
QUORUM_ACK_GRACE = 0.5
_FATAL = (
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ChannelLockedResource,
)
# aio-pika raises RuntimeError for a connection that is being restored.
_TRANSIENT = (ChannelInvalidStateError, AMQPError, ConnectionError, OSError, RuntimeError)


async def _spread(
    channels: list[aiormq.abc.AbstractChannel],
    calls: list[Callable[[aiormq.abc.AbstractChannel], Awaitable[Any]]],
) -> None:
    """Run ``calls`` over ``channels``, each channel taking every n-th call in turn."""

    async def run(index: int) -> None:
        for call in calls[index :: len(channels)]:
            await call(channels[index])

    await asyncio.gather(*(run(i) for i in range(len(channels))))


async def _delete_queue(channel: aiormq.abc.AbstractChannel, name: str) -> None:
    await channel.queue_delete(name)


class Unroutable(BrokerError):
    """RabbitMQ returned a mandatory publish: no queue was bound to receive it."""


class PublishRejected(BrokerError):
    """RabbitMQ refused a publish with a negative confirm (``basic.nack``)."""


def _loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _version(text: Any) -> tuple[int, ...]:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    parts = []
    for piece in str(text).split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


class RabbitMQBroker(Broker):
    """A broker on RabbitMQ (3.10 or newer) through aio-pika robust connections.

    Every taskflow queue is a durable RabbitMQ queue of its own, with a
    ``<queue>.dead`` queue for dead letters and a ladder of delay queues (see
    ``taskflow.brokers.rabbitmq._topology``). Messages are persistent.

    Guarantees and how they are kept:

    * **Publishing** waits for the publisher confirm, with mandatory routing:
      ``send`` returns once RabbitMQ holds the message, raises
      :class:`Unroutable` if no queue took it (the queue was deleted; the
      next send declares it again) and :class:`PublishRejected` on a
      negative confirm. With the connection down it retries until
      ``send_timeout`` and then raises :class:`taskflow.BrokerUnavailable`.
      A publish whose confirm was lost with the connection is sent again, so
      a connection drop can duplicate a message (at-least-once).
    * **Consuming** uses a channel per consumer with ``basic_qos`` prefetch
      equal to the consumer's prefetch. RabbitMQ counts deliveries being
      processed against that window too, so when all of it is handed out
      and unsettled a fresh consumer replaces the old one on the channel
      (the old deliveries stay valid): ``prefetch`` bounds what waits, not
      what runs. Messages are acked only after processing; the acks of one
      event-loop turn go out together (a ``multiple`` ack where tags are
      contiguous), and an ack returns once it is written to the socket.
      Deliveries on a channel that closed (connection drop, broker restart)
      are requeued by RabbitMQ; settling them raises
      :class:`taskflow.LeaseLost` without touching the server, and the
      channel and its consumer are restored by aio-pika without restarting
      the worker. A consumer that stops hands back what it fetched but did
      not hand out (republished with its count, then acked).
    * **Moves** (retry, requeue, dead letter) publish the new copy, wait for
      its confirm, then ack the delivery: a crash in between leaves a
      duplicate, never a loss.
    * **Delivery counts.** Quorum queues count redeliveries themselves
      (``x-delivery-count``); the main queue dead-letters into
      ``<queue>.dead`` so RabbitMQ's own delivery limit (20 by default on
      4.0) never drops a message. Classic queues only flag a redelivery, so
      this broker keeps the count in a header: an explicit requeue
      republishes with the count, and a delivery flagged ``redelivered``
      (its consumer died or lost its connection) is republished at the tail
      with the count raised by one before it is handed out. That makes the
      count exact for crash loops, at the cost of moving redelivered
      messages behind the ones already waiting; a crash between that
      republish and its ack counts one delivery twice.
    * **Priorities** use ``x-max-priority`` (``max_priority``, priorities
      are clamped to ``0..max_priority``) on classic queues. Quorum queues
      on RabbitMQ before 4.0 have no priorities; 4.0 has two levels only.
    * **Delays** never sit in a worker or with a consumer, so they may be
      longer than ``consumer_timeout``. Each pass through the ladder covers
      up to about 38 days in 50 ms steps; longer delays take another pass
      when they come out. A delay is never early.
    * **Dead letters** carry the reason and time in headers, are confirmed
      before the source is acked, and expire after ``dead_letter_ttl``
      (changing the TTL of an existing ``<queue>.dead`` needs deleting it
      first; the broker warns and keeps the old one). Listing reads them
      with ``basic.get`` and returns them unchanged, in order.
    * **Stats** come from passive queue declarations, read in the order
      messages flow: ``ready`` is the main queue's message count,
      ``delayed`` the sum over its delay queues. RabbitMQ does not report
      unacked counts over AMQP, so ``in_flight`` counts the deliveries *this
      process* holds; ``join`` in a process that does not consume only waits
      for ready and delayed messages. With quorum queues a message moving
      from one queue to the next is briefly counted nowhere, so an empty
      reading is taken a second time 100 ms later.
    * **Quorum queues on RabbitMQ 3.10** can drop acks that were sent just
      before their channel closed (the messages come back as redeliveries),
      so channels close, and the broker disconnects, only 0.5 s after the
      last ack.
    * **Long tasks**: RabbitMQ closes a channel whose delivery stays unacked
      past ``consumer_timeout`` (30 min by default). On RabbitMQ 3.12 and
      newer each consumer sets ``x-consumer-timeout`` above twice the
      longest ``time_limit`` of the queue's actors; on older servers the
      broker warns at start when a time limit exceeds ``consumer_timeout``
      (pass the server's value if it is not the default).

    Args:
        url: ``amqp://`` or ``amqps://`` URL (TLS certificates are verified;
            aio-pika URL options such as ``heartbeat`` and ``cafile`` apply).
        queue_type: ``"classic"`` or ``"quorum"``, for main and delay queues.
        confirm_delivery: Wait for publisher confirms on ``send`` (retries,
            requeues and dead letters always wait).
        prefix: Prepended to every queue and exchange name.
        max_priority: Highest priority of classic queues.
        consumer_timeout: The server's ``consumer_timeout`` in seconds when it
            is not RabbitMQ's default of 1,800.
        send_timeout: Seconds a publish or a management call may take,
            reconnection included, before it raises.
        reconnect_interval: Seconds between reconnection attempts (jittered).
        ssl_context: An ``ssl.SSLContext`` for ``amqps://`` (client
            certificates, a private CA).
        connection_name: Shown by ``rabbitmqctl list_connections``.
        **options: Passed to :class:`taskflow.Broker`.
    """

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        queue_type: QueueType = "classic",
        confirm_delivery: bool = True,
        prefix: str = "",
        max_priority: int = 10,
        consumer_timeout: float | None = None,
        send_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
        connection_name: str | None = None,
        **options: Any,
    ) -> None:
        if queue_type not in ("classic", "quorum"):
            raise ValueError(f"queue_type must be 'classic' or 'quorum', not {queue_type!r}")
        if not 1 <= max_priority <= 255:
            raise ValueError("max_priority must be between 1 and 255")
        if urlsplit(url).scheme not in ("amqp", "amqps"):
            raise ValueError(f"not an amqp:// or amqps:// URL: {mask_url(url)!r}")
        super().__init__(**options)
        self.url = url
        self.queue_type: QueueType = queue_type
        self.confirm_delivery = confirm_delivery
        self.prefix = prefix
        self.max_priority = max_priority
        self.consumer_timeout = consumer_timeout
        self.send_timeout = send_timeout
        self.reconnect_interval = reconnect_interval
        self.ssl_context = ssl_context
        self.connection_name = (
            connection_name or f"taskflow {socket.gethostname()} pid {os.getpid()}"
        )
        self.server_version: tuple[int, ...] = ()
        self.topology = Topology(prefix, queue_type, max_priority, self.dead_letter_ttl)
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._unconfirmed: AbstractRobustChannel | None = None
        self._admin: AbstractRobustChannel | None = None
        self._raw: dict[int, aiormq.Channel] = {}
        self._ensured: dict[str, QueueNames] = {}
        self._declared: set[str] = set()
        self._exchanges_ready = False
        self._ensure_lock = asyncio.Lock()
        self._held: dict[str, dict[int, DeliveredMessage]] = {}
        self._consumers: dict[str, set[Consumer]] = {}
        self._checked_timeouts: set[str] = set()
        self._outage = False
        self._last_ack = -math.inf

    def __repr__(self) -> str:
        return (
            f"RabbitMQBroker({mask_url(self.url)!r}, queue_type={self.queue_type!r}, "
            f"prefix={self.prefix!r})"
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build from an ``amqp://`` or ``amqps://`` URL."""
        return cls(url, **options)

    def _default_results(self) -> ResultBackend:
        raise TypeError(
            "RabbitMQ has no result store of its own: pass a result backend, "
            "e.g. RabbitMQBroker(url, results=RedisResults(redis_url))"
        )

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        password = urlsplit(self.url).password
        if password:
            text = text.replace(password, "***")
        return text[:300]

    # -- connection ---------------------------------------------------------

    async def _connect(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme == "amqp" and not _loopback(parts.hostname):
            logger.warning(
                "connecting to RabbitMQ at %s without TLS: credentials and messages travel "
                "in clear text (use amqps://)",
                mask_url(self.url),
            )
        try:
            with anyio.fail_after(self.send_timeout):
                connection = await aio_pika.connect_robust(
                    self.url,
                    reconnect_interval=self.reconnect_interval * random.uniform(0.8, 1.2),
                    ssl_context=self.ssl_context,
                    client_properties={"connection_name": self.connection_name},
                    timeout=self.send_timeout,
                )
        except (TimeoutError, *_TRANSIENT) as exc:
            raise BrokerUnavailable(
                f"could not connect to RabbitMQ at {mask_url(self.url)}: {self._describe(exc)}"
            ) from None
        self._connection = connection
        transport = connection.transport
        if transport is not None:
            self.server_version = _version(
                transport.connection.server_properties.get("version", "")
            )
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        if not self.confirm_delivery:
            self._unconfirmed = await connection.channel(publisher_confirms=False)
        self._admin = await connection.channel(publisher_confirms=False)
        self._ensured.clear()
        self._exchanges_ready = False
        self._outage = False
        logger.info(
            "connected to RabbitMQ %s at %s",
            ".".join(map(str, self.server_version)) or "(unknown version)",
            mask_url(self.url),
        )

    def _forget_connections(self) -> None:
        super()._forget_connections()
        self._connection = self._publisher = self._unconfirmed = self._admin = None
        self._raw = {}
        self._ensure_lock = asyncio.Lock()
        self._held = {}
        self._consumers = {}

    def _on_connection_lost(self, _sender: Any, exc: BaseException | None = None) -> None:
        if self._connection is None or self._connection.close_called or self._outage:
            return
        self._outage = True
        logger.warning(
            "lost the connection to RabbitMQ at %s (%s); reconnecting",
            mask_url(self.url),
            self._describe(exc) if exc is not None else "closed",
        )

    def _on_reconnected(self, _sender: Any) -> None:
        self._ensured.clear()
        self._exchanges_ready = False
        if self._outage:
            self._outage = False
            logger.warning("reconnected to RabbitMQ at %s", mask_url(self.url))

    def acked(self) -> None:
        """Note that a delivery was just settled (see :meth:`settle_grace`)."""
        self._last_ack = time.monotonic()

    async def settle_grace(self) -> None:
        """Before closing a channel, give recent acks on quorum queues time to apply.

        RabbitMQ 3.10 sends a quorum queue's settlements in a pipeline that
        holds back commands while many are pending; closing the channel right
        after a burst of acks can drop the held ones, and those messages come
        back as redeliveries.
        """
        if self.queue_type == "quorum":
            remaining = self._last_ack + QUORUM_ACK_GRACE - time.monotonic()
            if remaining > 0:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(remaining)

    async def _close(self) -> None:
        await self.settle_grace()
        connection, self._connection = self._connection, None
        self._publisher = self._unconfirmed = self._admin = None
        self._raw.clear()
        self._ensured.clear()
        if connection is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.send_timeout):
                await connection.close()

    def _require(self, channel: AbstractRobustChannel | None) -> AbstractRobustChannel:
        if channel is None or self._connection is None:
            raise BrokerUnavailable("the RabbitMQ broker is closed")
        return channel

    @property
    def connection(self) -> AbstractRobustConnection:
        """The aio-pika robust connection (connect first)."""
        if self._connection is None:
            raise BrokerUnavailable("the RabbitMQ broker is not connected")
        return self._connection

    async def _call(
        self,
        channel: AbstractRobustChannel | None,
        op: Callable[[aiormq.abc.AbstractChannel], Awaitable[T]],
        what: str,
    ) -> T:
        """Run ``op`` on ``channel``'s current AMQP channel, riding out reconnections."""
        robust = self._require(channel)
        deadline = anyio.current_time() + self.send_timeout
        pause = 0.05
        while True:
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0.001)):
                    await robust.ready()
                    raw = await robust.get_underlay_channel()
                    return await op(raw)
            except _FATAL as exc:
                raise BrokerError(f"RabbitMQ refused to {what}: {self._describe(exc)}") from None
            except DeliveryError:
                raise
            except TimeoutError:
                raise BrokerUnavailable(
                    f"could not {what} within {self.send_timeout} s: RabbitMQ at "
                    f"{mask_url(self.url)} is unreachable or blocked"
                ) from None
            except _TRANSIENT as exc:
                if anyio.current_time() + pause >= deadline:
                    raise BrokerUnavailable(f"could not {what}: {self._describe(exc)}") from None
                await anyio.sleep(pause)
                pause = min(pause * 2, 1.0)

    # -- topology -----------------------------------------------------------

    async def _ensure(self, queue: str) -> QueueNames:
        """Declare the entities of ``queue`` once per connection; return their names."""
        names = self._ensured.get(queue)
        if names is not None:
            return names
        names = self.topology.names(queue)
        async with self._ensure_lock:
            if queue not in self._ensured:
                await self._call(self._admin, lambda ch: self._declare(ch, names), "declare queues")
                self._ensured[queue] = names
                self._declared.add(queue)
        return names

    async def ensure(self, queue: str) -> None:
        """Declare ``queue``'s entities unless done on this connection already."""
        await self._ensure(queue)

    def forget(self, queue: str) -> None:
        """Declare ``queue``'s entities again on next use (it was deleted)."""
        self._ensured.pop(queue, None)

    @property
    def declared_queues(self) -> frozenset[str]:
        """The taskflow queues this broker object has declared on RabbitMQ."""
        return frozenset(self._declared)

    async def _declare(self, admin: aiormq.abc.AbstractChannel, names: QueueNames) -> None:
        # Declarations are durable writes on the server; spread over a few
        # channels they run side by side.
        channels = [await admin.connection.channel(publisher_confirms=False) for _ in range(8)]
        topology = self.topology
        try:
            if not self._exchanges_ready:

                async def exchange(ch: aiormq.abc.AbstractChannel, level: int) -> None:
                    await ch.exchange_declare(
                        topology.exchanges[level], exchange_type="topic", durable=True
                    )

                async def passthrough(ch: aiormq.abc.AbstractChannel, level: int) -> None:
                    await ch.exchange_bind(
                        topology.exchanges[level - 1],
                        topology.exchanges[level],
                        topology.passthrough_binding(level),
                    )

                await _spread(channels, [partial(exchange, level=k) for k in range(LEVELS)])
                await _spread(channels, [partial(passthrough, level=k) for k in range(1, LEVELS)])
                self._exchanges_ready = True

            async def main(ch: aiormq.abc.AbstractChannel) -> None:
                await ch.queue_declare(
                    names.main, durable=True, arguments=topology.main_arguments(names)
                )
                await ch.queue_bind(
                    names.main, topology.exchanges[0], routing_key=topology.final_binding(names)
                )

            async def delay(ch: aiormq.abc.AbstractChannel, level: int) -> None:
                await ch.queue_declare(
                    names.delays[level],
                    durable=True,
                    arguments=topology.delay_arguments(names, level),
                )
                await ch.queue_bind(
                    names.delays[level],
                    topology.exchanges[level],
                    routing_key=topology.delay_binding(names, level),
                )

            await _spread(
                channels,
                [main, *(partial(delay, level=k) for k in range(LEVELS))],
            )
        finally:
            for channel in channels:
                if not channel.is_closed:
                    await channel.close()
        await self._declare_dead(admin, names)

    async def _declare_dead(self, admin: aiormq.abc.AbstractChannel, names: QueueNames) -> None:
        # On a channel of its own: a dead-letter queue declared earlier with
        # another TTL fails the declaration and closes the channel.
        channel = await admin.connection.channel(publisher_confirms=False)
        try:
            await channel.queue_declare(
                names.dead, durable=True, arguments=self.topology.dead_arguments()
            )
        except ChannelPreconditionFailed:
            logger.warning(
                "%s exists with another dead_letter_ttl; keeping its TTL (delete the queue "
                "to apply %.0f s)",
                names.dead,
                self.dead_letter_ttl,
            )
            channel = await admin.connection.channel(publisher_confirms=False)
            await channel.queue_declare(names.dead, passive=True)
        finally:
            if not channel.is_closed:
                await channel.close()

    async def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` with its delay and dead-letter queues, messages and all.

        The shared delay exchanges stay.
        """
        await self.connect()
        names = self.topology.names(queue)
        self._ensured.pop(queue, None)

        async def delete(admin: aiormq.abc.AbstractChannel) -> None:
            channels = [await admin.connection.channel(publisher_confirms=False) for _ in range(8)]
            try:
                await _spread(
                    channels,
                    [
                        partial(_delete_queue, name=name)
                        for name in (names.main, names.dead, *names.delays)
                    ],
                )
            finally:
                for channel in channels:
                    if not channel.is_closed:
                        await channel.close()

        await self._call(self._admin, delete, "delete queues")
        self._declared.discard(queue)

    async def delete_exchanges(self) -> None:
        """Delete the delay exchanges of this broker's ``prefix`` (queues bound to them stay)."""
        await self.connect()

        async def delete(channel: aiormq.abc.AbstractChannel) -> None:
            for exchange in self.topology.exchanges:
                await channel.exchange_delete(exchange)

        await self._call(self._admin, delete, "delete exchanges")
        self._exchanges_ready = False
        self._ensured.clear()

    # -- publishing ---------------------------------------------------------

    def _properties(
        self,
        *,
        message_id: str | None,
        priority: int | None,
        headers: dict[str, Any],
    ) -> spec.Basic.Properties:
        return spec.Basic.Properties(
            delivery_mode=PERSISTENT,
            priority=min(max(priority or 0, 0), self.max_priority),
            message_id=message_id,
            content_type="application/json" if self.codec.name == "json" else "application/msgpack",
            headers=headers or None,
            timestamp=None,
        )

    async def _publish(
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
            exchange = self.topology.exchanges[units.bit_length() - 1]
            key = routing_key(units, names.token)
        else:
            exchange, key = "", names.main
        properties = self._properties(message_id=message_id, priority=priority, headers=headers)
        await self._basic_publish(
            exchange, key, body, properties, confirm=confirm, target=names.main
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
        channel = self._publisher if confirm or self._unconfirmed is None else self._unconfirmed
        mandatory = channel is self._publisher

        async def publish(raw: aiormq.abc.AbstractChannel) -> Any:
            concrete = cast("aiormq.Channel", raw)
            self._raw[id(channel)] = concrete
            return await concrete.basic_publish(
                body,
                exchange=exchange,
                routing_key=key,
                properties=properties,
                mandatory=mandatory,
                wait=False,
            )

        try:
            raw = self._raw.get(id(channel))
            if raw is not None and not raw.is_closed:
                # The fast path: the channel is open, no reconnection to wait for.
                try:
                    await raw.basic_publish(
                        body,
                        exchange=exchange,
                        routing_key=key,
                        properties=properties,
                        mandatory=mandatory,
                        timeout=self.send_timeout,
                        wait=False,
                    )
                    return
                except _FATAL as exc:
                    raise BrokerError(
                        f"RabbitMQ refused a publish: {self._describe(exc)}"
                    ) from None
                except TimeoutError:
                    raise BrokerUnavailable(
                        f"no publisher confirm within {self.send_timeout} s: RabbitMQ at "
                        f"{mask_url(self.url)} is unreachable or blocked"
                    ) from None
                except DeliveryError:
                    raise
                except _TRANSIENT:
                    pass  # the channel closed under us: wait for it below
            await self._call(channel, publish, "publish a message")
        except PublishError as exc:
            self._forget(target)
            raise Unroutable(
                f"RabbitMQ returned a message for {target!r} as unroutable ({exc}); was the "
                "queue deleted? The next send declares it again"
            ) from None
        except DeliveryError as exc:
            raise PublishRejected(f"RabbitMQ rejected a publish: {exc}") from None

    def _forget(self, target: str) -> None:
        for queue, names in list(self._ensured.items()):
            if target in (names.main, names.dead):
                del self._ensured[queue]

    async def _enqueue(self, queue: str, envelopes: Sequence[Envelope]) -> None:
        names = await self._ensure(queue)
        confirm = self.confirm_delivery
        if len(envelopes) == 1:
            e = envelopes[0]
            await self._publish(
                names, e.body, message_id=e.id, priority=e.priority, delay=e.delay, confirm=confirm
            )
            return
        results = await asyncio.gather(
            *(
                self._publish(
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

    # -- moves used by receipts ---------------------------------------------

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
        await self._publish(
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
        headers = {H_REASON: reason[:1000], H_DEAD_AT: time.time()}
        properties = self._properties(
            message_id=message_id, priority=message.header.properties.priority, headers=headers
        )
        await self._basic_publish(
            "", names.dead, message.body, properties, confirm=True, target=names.dead
        )

    # -- consuming ----------------------------------------------------------

    def hold(self, queue: str, message: DeliveredMessage) -> None:
        """Count ``message`` as in flight in this process."""
        self._held.setdefault(queue, {})[id(message)] = message

    def release(self, queue: str, message: DeliveredMessage) -> None:
        """Stop counting ``message`` as in flight."""
        held = self._held.get(queue)
        if held is not None:
            held.pop(id(message), None)

    def _in_flight(self, queue: str) -> int:
        held = self._held.get(queue)
        if not held:
            return 0
        for key, message in list(held.items()):
            if not Consumer.alive(message):
                del held[key]
        return len(held)

    def _longest_time_limit(self, queue: str) -> tuple[bool, float]:
        """(whether some actor of ``queue`` has no time limit, the longest limit)."""
        from taskflow.middleware import TimeLimit

        default: float | None = None
        for m in self.middleware:
            if isinstance(m, TimeLimit):
                default = m.time_limit
        unlimited, longest = False, 0.0
        for actor in self.actors.values():
            if actor.queue != queue:
                continue
            limit = actor.options.get("time_limit", default)
            if limit is None:
                unlimited = True
            else:
                longest = max(longest, seconds(limit))
        return unlimited, longest

    def consumer_arguments(self, queue: str) -> dict[str, Any]:
        """``basic.consume`` arguments for ``queue``, warning once about ``consumer_timeout``.

        On RabbitMQ 3.12 and newer the consumer gets ``x-consumer-timeout``
        above twice the longest time limit of the queue's actors (a message
        may wait in the prefetch buffer for a slot before it runs).
        """
        unlimited, longest = self._longest_time_limit(queue)
        server_timeout = self.consumer_timeout or RABBITMQ_DEFAULT_CONSUMER_TIMEOUT
        needed = 2 * longest + 60
        warn = queue not in self._checked_timeouts
        self._checked_timeouts.add(queue)
        if self.server_version >= (3, 12) and not unlimited:
            if needed > server_timeout:
                return {"x-consumer-timeout": int(needed * 1000)}
            return {}
        if warn and (unlimited or longest > server_timeout):
            logger.warning(
                "consumer_timeout < time_limit on queue %s: RabbitMQ %s closes a channel whose "
                "delivery stays unacked for %.0f s, but an actor of this queue may run %s; the "
                "message would then run again. Raise consumer_timeout on the server (or use "
                "RabbitMQ 3.12+, where taskflow sets x-consumer-timeout per consumer) or lower "
                "the time limit",
                queue,
                ".".join(map(str, self.server_version)) or "",
                server_timeout,
                "without a limit" if unlimited else f"{longest:.0f} s",
            )
        return {}

    async def _consume(self, queue: str, prefetch: int) -> AsyncGenerator[Receipt, None]:
        names = await self._ensure(queue)
        consumer = Consumer(self, queue, names, prefetch, self.consumer_arguments(queue))
        try:
            await consumer.start()
        except TimeoutError:
            raise BrokerUnavailable(f"could not start consuming {queue!r}") from None
        except _FATAL as exc:
            raise BrokerError(f"could not consume {queue!r}: {self._describe(exc)}") from None
        except _TRANSIENT as exc:
            raise BrokerUnavailable(f"could not consume {queue!r}: {self._describe(exc)}") from None
        self._consumers.setdefault(queue, set()).add(consumer)
        try:
            while True:
                message = await consumer.next()
                receipt = await consumer.accept(message)
                if receipt is not None:
                    yield receipt
        finally:
            self._consumers.get(queue, set()).discard(consumer)
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.send_timeout):
                await consumer.stop()

    # -- inspection ---------------------------------------------------------

    async def _stats(self, queue: str) -> QueueStats:
        names = await self._ensure(queue)
        stats = await self._read_stats(queue, names)
        if self.queue_type == "quorum" and not any(stats[:3]):
            # Quorum queues dead-letter (the delay ladder's last step) through
            # a Raft round: a message between two queues is counted by neither
            # for a few milliseconds. A second look after that settles it.
            await anyio.sleep(QUORUM_SETTLE)
            stats = await self._read_stats(queue, names)
        return stats

    async def _read_stats(self, queue: str, names: QueueNames) -> QueueStats:
        before = self._in_flight(queue)
        # Read in the direction messages flow (dead, the ladder from the top,
        # the main queue) so a message moving along is seen at least once.
        order = (names.dead, *reversed(names.delays), names.main)

        async def read(channel: aiormq.abc.AbstractChannel) -> list[int]:
            return [
                (await channel.queue_declare(name, passive=True)).message_count or 0
                for name in order
            ]

        counts = await self._call(self._admin, read, "read queue counts")
        dead, ready, delayed = counts[0], counts[-1], sum(counts[1:-1])
        if ready == 0 and delayed == 0 and before == 0:
            # Deliveries dispatched before the count above may still be on
            # the wire to a consumer of this process: a round trip on each
            # consumer's channel brings them in first.
            for consumer in list(self._consumers.get(queue, ())):
                await consumer.barrier()
        return QueueStats(ready, delayed, max(before, self._in_flight(queue)), dead)

    async def _dead_letters(self, queue: str, limit: int) -> list[DeadRecord]:
        names = await self._ensure(queue)

        async def read(channel: aiormq.abc.AbstractChannel) -> list[DeadRecord]:
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

        return await self._on_fresh_channel(read, "read dead letters")

    async def _on_fresh_channel(
        self, op: Callable[[aiormq.abc.AbstractChannel], Awaitable[T]], what: str
    ) -> T:
        """Run ``op`` on a short-lived channel (its unacked messages return when it closes)."""

        async def run(admin: aiormq.abc.AbstractChannel) -> T:
            channel = await admin.connection.channel(publisher_confirms=False)
            try:
                return await op(channel)
            finally:
                if not channel.is_closed:
                    await channel.close()

        return await self._call(self._admin, run, what)

    async def _requeue_dead(self, queue: str, ids: list[str] | None) -> int:
        names = await self._ensure(queue)
        wanted = None if ids is None else set(ids)

        async def move(channel: aiormq.abc.AbstractChannel) -> int:
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
                    await self._publish(
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

        return await self._on_fresh_channel(move, "requeue dead letters")

    async def _purge(self, queue: str) -> int:
        names = await self._ensure(queue)

        async def purge(channel: aiormq.abc.AbstractChannel) -> int:
            total = 0
            for name in (*reversed(names.delays), names.main):
                total += (await channel.queue_purge(name)).message_count or 0
            return total

        return await self._call(self._admin, purge, "purge a queue")

    async def _purge_dead(self, queue: str) -> int:
        names = await self._ensure(queue)

        async def purge(channel: aiormq.abc.AbstractChannel) -> int:
            return (await channel.queue_purge(names.dead)).message_count or 0

        return await self._call(self._admin, purge, "purge dead letters")

    async def _known_queues(self) -> list[str]:
        return list(self._ensured)

    # -- helpers for receipts -----------------------------------------------

    @staticmethod
    def new_message_id() -> str:
        """An id for a message published without one (raw injections)."""
        return f"amqp-{uuid.uuid4().hex}"
