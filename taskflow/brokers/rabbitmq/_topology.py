"""Names, arguments and delay routing of the RabbitMQ entities behind one taskflow queue.

For a taskflow queue ``q`` (with the broker's ``prefix`` ``p``):

* ``p+q``: the main queue (durable; classic with ``x-max-priority``, or quorum);
* ``p+q.dead``: its dead letters (durable classic queue, ``x-message-ttl`` =
  ``dead_letter_ttl``);
* ``p+q.delay.0`` … ``p+q.delay.25``: the delay ladder. Level ``k`` holds
  messages for exactly ``UNIT_MS * 2**k`` ms (a fixed ``x-message-ttl`` per
  queue, so the head always expires first and nothing waits behind a longer
  delay), then dead-letters them onward.

Delays are counted in units of ``UNIT_MS`` and written in binary into the
routing key, one word per level from the highest: ``"0.0.1.1.<queue hex>"``.
Shared topic exchanges ``p+taskflow.delay.<k>`` route by the word of level
``k``: a ``1`` goes into level ``k``'s delay queue of that taskflow queue, a
``0`` passes straight on to exchange ``k-1``. Level ``k``'s delay queue
dead-letters into exchange ``k-1`` (level 0 into the main queue) and keeps the
routing key, so a message visits exactly the levels of its set bits and is
never early: the sum of the TTLs is the delay rounded up to a unit.

:class:`Declarer` declares a queue's entities once per connection (again
after a reconnection, or when a publish comes back unroutable because the
queue was deleted) and deletes them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from aiormq.exceptions import ChannelPreconditionFailed

if TYPE_CHECKING:
    from aiormq.abc import AbstractChannel

    from taskflow.brokers.rabbitmq._connection import Link

logger = logging.getLogger("taskflow.brokers.rabbitmq")

UNIT_MS = 50
LEVELS = 26
MAX_UNITS = (1 << LEVELS) - 1
MAX_DELAY = MAX_UNITS * UNIT_MS / 1000  # about 38.8 days per pass through the ladder
MAX_QUEUE_NAME = 100  # bytes; the routing key holds the name in hex after LEVELS words

QueueType = Literal["classic", "quorum"]


class QueueNames(NamedTuple):
    """The RabbitMQ names behind one taskflow queue."""

    main: str
    dead: str
    delays: tuple[str, ...]
    token: str  # the taskflow queue name as one topic word


def delay_units(seconds: float) -> int:
    """Whole units of ``UNIT_MS`` covering ``seconds`` (at least one for any positive delay)."""
    if seconds <= 0:
        return 0
    return max(1, math.ceil(round(seconds * 1000, 3) / UNIT_MS))


def routing_key(units: int, token: str) -> str:
    """The routing key that walks a message through the levels of ``units``' set bits."""
    return ".".join(format(units, f"0{LEVELS}b")) + "." + token


def _pattern(level: int, word: str, tail: str) -> str:
    words = ["*"] * LEVELS
    words[LEVELS - 1 - level] = word
    return ".".join(words) + "." + tail


class Topology:
    """Entity names and declaration arguments for one broker configuration."""

    def __init__(
        self,
        prefix: str,
        queue_type: QueueType,
        max_priority: int,
        dead_letter_ttl: float,
    ) -> None:
        self.prefix = prefix
        self.queue_type = queue_type
        self.max_priority = max_priority
        self.dead_letter_ttl_ms = max(1, int(dead_letter_ttl * 1000))
        self.exchanges = tuple(f"{prefix}taskflow.delay.{k}" for k in range(LEVELS))

    def names(self, queue: str) -> QueueNames:
        """Names for taskflow queue ``queue``.

        Raises:
            ValueError: The name is empty or longer than ``MAX_QUEUE_NAME`` bytes.
        """
        raw = queue.encode()
        if not raw or len(raw) > MAX_QUEUE_NAME:
            raise ValueError(
                f"RabbitMQ queue names must be 1 to {MAX_QUEUE_NAME} bytes, got {len(raw)}"
            )
        main = self.prefix + queue
        return QueueNames(
            main=main,
            dead=f"{main}.dead",
            delays=tuple(f"{main}.delay.{k}" for k in range(LEVELS)),
            token=raw.hex(),
        )

    def _typed(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
            # The server's own dead-lettering (a delivery limit, a TTL) is
            # at-least-once only with reject-publish overflow.
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return arguments

    def main_arguments(self, names: QueueNames) -> dict[str, Any]:
        """Arguments of the main queue: priorities (classic) and a dead-letter route."""
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": names.dead,
        }
        if self.queue_type == "classic":
            arguments["x-max-priority"] = self.max_priority
        return self._typed(arguments)

    def dead_arguments(self) -> dict[str, Any]:
        """Arguments of the dead-letter queue: a classic queue that drops letters after the TTL."""
        return {"x-message-ttl": self.dead_letter_ttl_ms}

    def delay_arguments(self, names: QueueNames, level: int) -> dict[str, Any]:
        """Arguments of delay level ``level``: fixed TTL, dead-lettered one level down."""
        arguments: dict[str, Any] = {"x-message-ttl": UNIT_MS << level}
        if level == 0:
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = names.main
        else:
            arguments["x-dead-letter-exchange"] = self.exchanges[level - 1]
        return self._typed(arguments)

    def delay_binding(self, names: QueueNames, level: int) -> str:
        """Binding key from exchange ``level`` to this queue's delay queue of that level."""
        return _pattern(level, "1", names.token)

    def final_binding(self, names: QueueNames) -> str:
        """Binding key from exchange 0 to the main queue (lowest bit clear: no more waiting)."""
        return _pattern(0, "0", names.token)

    def passthrough_binding(self, level: int) -> str:
        """Binding key from exchange ``level`` to exchange ``level - 1`` (this level's bit clear)."""
        return _pattern(level, "0", "#")


Step = Callable[["AbstractChannel"], Awaitable[Any]]


async def _spread(channels: list[AbstractChannel], steps: list[Step]) -> None:
    """Run ``steps`` over ``channels``, each channel taking every n-th step in turn."""

    async def run(index: int) -> None:
        for step in steps[index :: len(channels)]:
            await step(channels[index])

    await asyncio.gather(*(run(i) for i in range(len(channels))))


async def _on_channels(admin: AbstractChannel, *stages: list[Step], width: int = 8) -> None:
    """Run each stage's steps spread over ``width`` fresh channels, one stage after another."""
    # Declarations are durable writes on the server; spread over a few
    # channels they run side by side.
    channels = [await admin.connection.channel(publisher_confirms=False) for _ in range(width)]
    try:
        for steps in stages:
            await _spread(channels, steps)
    finally:
        for channel in channels:
            if not channel.is_closed:
                await channel.close()


class Declarer:
    """Declares the entities of taskflow queues on one connection, once each."""

    def __init__(self, link: Link, topology: Topology, dead_letter_ttl: float) -> None:
        self.link = link
        self.topology = topology
        self.dead_letter_ttl = dead_letter_ttl
        self.ensured: dict[str, QueueNames] = {}
        self.declared: set[str] = set()  # ever declared by this broker object
        self._exchanges_ready = False
        self._lock = asyncio.Lock()
        link.on_reconnect.append(self.reset)

    def reset(self) -> None:
        """Declare everything again on next use (a new connection, a fresh server)."""
        self.ensured.clear()
        self._exchanges_ready = False
        self._lock = asyncio.Lock()

    def forget(self, queue: str) -> None:
        """Declare ``queue``'s entities again on next use (it was deleted)."""
        self.ensured.pop(queue, None)

    def forget_target(self, target: str) -> None:
        """Forget the queue whose main or dead-letter queue is ``target``."""
        for queue, names in list(self.ensured.items()):
            if target in (names.main, names.dead):
                del self.ensured[queue]

    async def ensure(self, queue: str) -> QueueNames:
        """Declare the entities of ``queue`` once per connection; return their names."""
        names = self.ensured.get(queue)
        if names is not None:
            return names
        names = self.topology.names(queue)
        async with self._lock:
            if queue not in self.ensured:
                await self.link.call(lambda ch: self._declare(ch, names), "declare queues")
                self.ensured[queue] = names
                self.declared.add(queue)
        return names

    async def _declare(self, admin: AbstractChannel, names: QueueNames) -> None:
        topology = self.topology
        stages: list[list[Step]] = []
        if not self._exchanges_ready:

            async def exchange(ch: AbstractChannel, level: int) -> None:
                await ch.exchange_declare(
                    topology.exchanges[level], exchange_type="topic", durable=True
                )

            async def passthrough(ch: AbstractChannel, level: int) -> None:
                await ch.exchange_bind(
                    topology.exchanges[level - 1],
                    topology.exchanges[level],
                    topology.passthrough_binding(level),
                )

            stages.append([partial(exchange, level=k) for k in range(LEVELS)])
            stages.append([partial(passthrough, level=k) for k in range(1, LEVELS)])

        async def main(ch: AbstractChannel) -> None:
            await ch.queue_declare(
                names.main, durable=True, arguments=topology.main_arguments(names)
            )
            await ch.queue_bind(
                names.main, topology.exchanges[0], routing_key=topology.final_binding(names)
            )

        async def delay(ch: AbstractChannel, level: int) -> None:
            await ch.queue_declare(
                names.delays[level], durable=True, arguments=topology.delay_arguments(names, level)
            )
            await ch.queue_bind(
                names.delays[level],
                topology.exchanges[level],
                routing_key=topology.delay_binding(names, level),
            )

        stages.append([main, *(partial(delay, level=k) for k in range(LEVELS))])
        await _on_channels(admin, *stages)
        self._exchanges_ready = True
        await self._declare_dead(admin, names)

    async def _declare_dead(self, admin: AbstractChannel, names: QueueNames) -> None:
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
        """Delete ``queue`` with its delay and dead-letter queues, messages and all."""
        names = self.topology.names(queue)
        self.ensured.pop(queue, None)

        async def delete(ch: AbstractChannel, name: str) -> None:
            await ch.queue_delete(name)

        steps: list[Step] = [
            partial(delete, name=name) for name in (names.main, names.dead, *names.delays)
        ]
        await self.link.call(lambda admin: _on_channels(admin, steps), "delete queues")
        self.declared.discard(queue)

    async def delete_exchanges(self) -> None:
        """Delete the delay exchanges of this prefix (queues bound to them stay)."""

        async def delete(channel: AbstractChannel) -> None:
            for exchange in self.topology.exchanges:
                await channel.exchange_delete(exchange)

        await self.link.call(delete, "delete exchanges")
        self._exchanges_ready = False
        self.ensured.clear()
