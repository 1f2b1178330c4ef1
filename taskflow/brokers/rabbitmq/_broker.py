"""The RabbitMQ broker: the transport hooks over the package's parts.

Where each job lives:

* ``_connection``: a robust connection (:class:`Link`), error kinds, and
  running an operation through reconnections;
* ``_topology``: names and arguments of the entities behind a taskflow
  queue, and declaring / deleting them;
* ``_publisher``: sends and moves, confirmed;
* ``_headers``: the headers taskflow writes and reads;
* ``_consumer`` (with ``_acks``): consuming, receipts, settling;
* ``_inspect``: counts, dead letters, requeueing and purging.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import anyio

from taskflow._inspection import BrowseRecord, State
from taskflow._time import seconds
from taskflow._transport import DeadRecord, Envelope, QueueStats, Receipt
from taskflow._urls import mask_url
from taskflow.broker import Broker
from taskflow.brokers.rabbitmq._connection import FATAL, TRANSIENT, Link
from taskflow.brokers.rabbitmq._consumer import Consumer, Deliveries, Plumbing
from taskflow.brokers.rabbitmq._control import CancelFanout
from taskflow.brokers.rabbitmq._inspect import UNBROWSABLE, Inspector
from taskflow.brokers.rabbitmq._management import Management, management_url
from taskflow.brokers.rabbitmq._publisher import Publisher
from taskflow.brokers.rabbitmq._topology import Declarer, QueueType, Topology
from taskflow.errors import BrokerError, BrokerUnavailable, JoinTimeout

#: Seconds a schedule's last fire time is kept in the result backend.
_LAST_TTL = 30 * 24 * 3600.0
#: Result-backend key prefix of a cancelled message id.
_CANCEL_KEY = "taskflow-cancel:"
#: Result-backend key prefix of a unique key's holder.
_UNIQUE_KEY = "taskflow-unique:"

if TYPE_CHECKING:
    import ssl

    from taskflow.results import ResultBackend

logger = logging.getLogger("taskflow.brokers.rabbitmq")

RABBITMQ_DEFAULT_CONSUMER_TIMEOUT = 1800.0


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
      what runs. Messages are acked only after processing. One writer per
      channel sends the settlements of an event-loop turn together (a
      ``multiple`` ack where tags are contiguous, see ``_acks``), in order,
      and an ack returns once it is written to the socket.
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
      unacked counts over AMQP. When every consumer of the queue is in this
      process (the declare's consumer count says so), ``in_flight`` is the
      deliveries it holds, exactly. Otherwise (a producer, the CLI, a web
      app) it is the management API's ``messages_unacknowledged``, and
      ``join`` does not trust a zero until it is fresh: the figures lag by
      up to two ``collect_statistics_interval`` (5 s by default; a new
      queue has none for a few seconds, a queue with 4 unacked read 0 for
      over 6 s here). A zero counts once the queue emitted it on going idle
      (``idle_since``, server clock) after ready and delayed were first read
      as 0 by passive declares (exact), or once every count has read 0 for
      12 s. So ``join`` from a process that does not consume returns up to
      about 12 s after the last ack; a consuming process that holds every
      consumer of the queue (the declare's consumer count) needs no
      management reading and joins at once; so does any process while the
      queue has no consumer at all (a worker that has cancelled its
      consumer and is finishing its last messages is then not counted). Without the management plugin
      (``management_url=False``, or unreachable: logged once) a process that
      does not consume sees only ready and delayed messages. With quorum
      queues a message moving from one queue to the next is briefly counted
      nowhere, so an empty reading is taken a second time 100 ms later.
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
        management_url: The management API (``http://user:pass@host:15672``,
            ``?vhost=`` for another vhost); ``True`` (the default) derives it
            from ``url``, ``False`` turns it off.
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
        management_url: str | bool = True,
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
        self.management_url = management_url
        self.connection_name = (
            connection_name or f"taskflow {socket.gethostname()} pid {os.getpid()}"
        )
        self._build()

    def _build(self) -> None:
        """The parts, unconnected.

        Two connections: one publishes, the other consumes, acks and runs
        management calls. RabbitMQ blocks a connection that publishes during
        a memory or disk alarm (it stops reading from it altogether); acks
        and counts on a connection of their own keep flowing, so workers
        drain the backlog that the alarm is about.
        """
        self._link = self._new_link("")
        self._publishing = self._new_link(" publishing")
        topology = Topology(self.prefix, self.queue_type, self.max_priority, self.dead_letter_ttl)
        self._declarer = Declarer(self._link, topology, self.dead_letter_ttl)
        self._publisher = Publisher(
            self._publishing,
            self._declarer,
            content_type="application/json" if self.codec.name == "json" else "application/msgpack",
            max_priority=self.max_priority,
            confirm_delivery=self.confirm_delivery,
        )
        self._deliveries = Deliveries(self.queue_type)
        url = self.management_url
        management = Management(management_url(self.url) if url is True else url) if url else None
        self._inspector = Inspector(
            self._link,
            self._declarer,
            self._publisher,
            self._deliveries,
            self.queue_type,
            management,
        )
        self._plumbing = Plumbing(self._link, self._declarer, self._publisher, self._deliveries)
        self._checked_timeouts: set[str] = set()
        self._fanout = CancelFanout(self._link, f"{self.prefix}taskflow.cancel")

    def _new_link(self, role: str) -> Link:
        return Link(
            self.url,
            name=self.connection_name + role,
            timeout=self.send_timeout,
            reconnect_interval=self.reconnect_interval,
            ssl_context=self.ssl_context,
        )

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

    # -- connection ---------------------------------------------------------

    async def _connect(self) -> None:
        link = self._link
        await link.open()
        try:
            await self._publishing.open()
            await self._publisher.open()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await link.close()
            raise
        self._declarer.reset()
        logger.info(
            "connected to RabbitMQ %s at %s",
            ".".join(map(str, link.server_version)) or "(unknown version)",
            mask_url(self.url),
        )

    async def _close(self) -> None:
        await self._deliveries.settle_grace()
        self._publisher.forget()
        self._fanout.forget()
        self._declarer.reset()
        await self._publishing.close()
        await self._link.close()

    def _forget_connections(self) -> None:
        super()._forget_connections()
        declared = self._declarer.declared
        self._build()
        self._declarer.declared |= declared

    # -- the transport hooks --------------------------------------------------

    async def _enqueue(self, queue: str, envelopes: Sequence[Envelope]) -> None:
        names = await self._declarer.ensure(queue)
        await self._publisher.enqueue(names, envelopes)

    async def _consume(
        self, queue: str, prefetch: int, time_limit: float | None
    ) -> AsyncGenerator[Receipt, None]:
        names = await self._declarer.ensure(queue)
        arguments = self._consumer_arguments(queue, time_limit)
        consumer = Consumer(self._plumbing, queue, names, prefetch, arguments)
        try:
            await consumer.start()
        except TimeoutError:
            raise BrokerUnavailable(f"could not start consuming {queue!r}") from None
        except FATAL as exc:
            raise BrokerError(f"could not consume {queue!r}: {self._link.describe(exc)}") from None
        except TRANSIENT as exc:
            raise BrokerUnavailable(
                f"could not consume {queue!r}: {self._link.describe(exc)}"
            ) from None
        consumers = self._deliveries.consumers.setdefault(queue, set())
        consumers.add(consumer)
        try:
            while True:
                message = await consumer.next()
                receipt = await consumer.accept(message)
                if receipt is not None:
                    yield receipt
        finally:
            consumers.discard(consumer)
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.send_timeout):
                await consumer.stop()

    async def _stats(self, queue: str) -> QueueStats:
        return await self._inspector.stats(queue)

    async def join(self, queue: str, *, timeout: float | dt.timedelta | None = None) -> None:
        """Wait until ``queue`` has nothing ready, delayed or unacked in any process.

        Raises:
            JoinTimeout: ``timeout`` seconds passed first.
        """
        limit = None if timeout is None else seconds(timeout)
        await self.connect()
        with anyio.move_on_after(limit) as scope:
            await self._inspector.drain(queue)
        if scope.cancelled_caught:
            raise JoinTimeout(f"queue {queue!r} did not drain within {limit} s")

    async def _dead_letters(self, queue: str, limit: int) -> list[DeadRecord]:
        return await self._inspector.dead_letters(queue, limit)

    async def _requeue_dead(self, queue: str, ids: list[str] | None) -> int:
        return await self._inspector.requeue_dead(queue, ids)

    async def _purge(self, queue: str) -> int:
        return await self._inspector.purge(queue)

    async def _purge_dead(self, queue: str) -> int:
        return await self._inspector.purge_dead(queue)

    async def _known_queues(self) -> list[str]:
        return list(self._declarer.ensured)

    async def _browse(
        self, queue: str, state: State, limit: int, offset: int
    ) -> list[BrowseRecord]:
        return self._inspector.browse(queue, state, limit, offset)

    async def _locate(self, queue: str, message_id: str) -> BrowseRecord | None:
        found = self._inspector.locate(queue, message_id)
        if found is None:
            raise NotImplementedError(UNBROWSABLE.format(state="ready, delayed or dead"))
        return found

    # -- schedules ------------------------------------------------------------
    # RabbitMQ has no key look-up: fire times are claimed in the result
    # backend (an atomic counter per fire time) when one is configured, and
    # only within this process otherwise.

    async def _claim_fire(self, schedule: str, fire_at: float, ttl: float) -> bool:
        if self.results is None:
            return await super()._claim_fire(schedule, fire_at, ttl)
        ms = round(fire_at * 1000)
        if await self.results.incr(f"taskflow-cron:{schedule}:{ms}", ttl) != 1:
            return False
        await self.results._put(f"taskflow-cron:{schedule}:last", str(ms).encode(), _LAST_TTL)
        return True

    async def _last_fire(self, schedule: str) -> float | None:
        if self.results is None:
            return await super()._last_fire(schedule)
        data = await self.results._get(f"taskflow-cron:{schedule}:last", 0)
        return None if data is None else int(data) / 1000

    # -- cancellation and unique keys ----------------------------------------
    # A cancellation is published to a fanout exchange that every worker's
    # watch follows, and also stored in the result backend (when there is
    # one) so that a worker that was not listening refuses the message when
    # it comes. Unique keys are claimed atomically in the result backend
    # (RabbitMQ has no key look-up); without one, only in this process.

    def _cancel_lookups(self) -> bool:
        return self.results is not None

    async def _cancel(self, message_id: str, ttl: float) -> None:
        if self.results is not None:
            await self.results._put(_CANCEL_KEY + message_id, b"1", ttl)
        await self._fanout.publish(message_id)

    async def _cancellations(self, cursor: str | None) -> tuple[list[str], str | None]:
        await self._fanout.follow()
        return self._fanout.take(), cursor

    async def _was_cancelled(self, message_id: str) -> bool:
        if self.results is None:
            return False
        return await self.results._get(_CANCEL_KEY + message_id, 0) is not None

    async def _unique_claim(self, key: str, message_id: str, ttl: float) -> str | None:
        if self.results is None:
            return await super()._unique_claim(key, message_id, ttl)
        held = await self.results.claim(_UNIQUE_KEY + key, message_id.encode(), ttl)
        return None if held is None else held.decode()

    async def _unique_release(self, key: str, message_id: str, ttl: float) -> None:
        if self.results is None:
            return await super()._unique_release(key, message_id, ttl)
        name, holder = _UNIQUE_KEY + key, message_id.encode()
        if await self.results._get(name, 0) == holder:
            await self.results._put(name, holder, ttl)
        return None

    # -- clean-up -------------------------------------------------------------

    async def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` with its delay and dead-letter queues, messages and all.

        The shared delay exchanges stay.
        """
        await self.connect()
        await self._declarer.delete_queue(queue)

    async def delete_exchanges(self) -> None:
        """Delete the delay exchanges of this broker's ``prefix`` (queues bound to them stay)."""
        await self.connect()
        await self._declarer.delete_exchanges()

    # -- long tasks -------------------------------------------------------------

    def _consumer_arguments(self, queue: str, time_limit: float | None) -> dict[str, Any]:
        """``basic.consume`` arguments for ``queue``, warning once about ``consumer_timeout``.

        ``time_limit`` is the longest time limit of the queue's actors, as
        the hub hands it over (``None``: one has none). On RabbitMQ 3.12 and
        newer the consumer gets ``x-consumer-timeout`` above twice that (a
        message may wait in the prefetch buffer for a slot before it runs).
        """
        unlimited, longest = time_limit is None, time_limit or 0.0
        version = self._link.server_version
        server_timeout = self.consumer_timeout or RABBITMQ_DEFAULT_CONSUMER_TIMEOUT
        needed = 2 * longest + 60
        warn = queue not in self._checked_timeouts
        self._checked_timeouts.add(queue)
        if version >= (3, 12) and not unlimited:
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
                ".".join(map(str, version)) or "",
                server_timeout,
                "without a limit" if unlimited else f"{longest:.0f} s",
            )
        return {}
