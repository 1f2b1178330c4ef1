"""Settling deliveries on one AMQP channel: one writer, in order, acks coalesced.

RabbitMQ matches every ``basic.ack`` / ``basic.nack`` against the channel's
unacked deliveries. A tag it no longer holds (acked twice, or covered by an
earlier ``multiple`` ack) is a protocol error: the server closes the channel
(``PRECONDITION_FAILED - unknown delivery tag``) and redelivers everything
still unacked on it, so messages that were running or done-but-unacked run
twice. A ``multiple`` ack also settles every unacked tag below it, so it must
never reach the server before a tag it covers is really done.

Hence the rules kept here:

* Settlements are written by **one task per channel**, in rounds. A round
  takes everything waiting at its start; what is asked for while it writes
  waits for the next round. Two rounds never write side by side: the
  connection's frame buffer is bounded, and a writer blocked on it can be
  overtaken by another, which would put a ``multiple`` ack ahead of the
  single acks it covers (RELIABILITY.md, S24).
* A round writes its nacks first, then every waiting ack below the lowest
  tag still unsettled as one ``multiple`` ack (its own tag is one being
  acked, so the server holds it), then the other acks one by one. Everything
  below that lowest unsettled tag is done, handed back or already written.
* A round that fails (the channel closed under it, or its frames could not
  be handed to the connection within ``timeout``: a dead connection's frame
  buffer is never emptied) fails its waiters: they learn that their
  settlement may not have reached the server, and RabbitMQ redelivers what
  it did not get. Nothing is reported as acked that was not written. After
  a failed round the channel's acks go one by one: a tag whose frame was
  lost is still unacked on the server, and a ``multiple`` ack must not
  settle it by accident (for a nack, that would lose the message).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from aio_pika.exceptions import ChannelInvalidStateError

if TYPE_CHECKING:
    from aiormq.abc import AbstractChannel

#: A frame to write: (delivery tag, multiple, requeue); requeue None means an ack.
Frame = tuple[int, bool, bool | None]


def _retrieve(future: asyncio.Future[None]) -> None:
    # A waiter that was cancelled never reads the round's outcome.
    if not future.cancelled():
        future.exception()


class ChannelAcks:
    """Unsettled delivery tags of one AMQP channel, and the settlements waiting to be written."""

    __slots__ = (
        "acks",
        "channel",
        "coalesce",
        "delivered",
        "nacks",
        "order",
        "timeout",
        "_round",
        "_writer",
    )

    def __init__(self, channel: AbstractChannel, timeout: float) -> None:
        self.channel = channel
        self.timeout = timeout
        self.coalesce = True  # until a round fails
        self.delivered: set[int] = set()  # delivered, not yet asked to be settled
        self.order: deque[int] = deque()  # delivered tags, ascending (lazily pruned)
        self.acks: set[int] = set()  # waiting for the next round
        self.nacks: set[int] = set()
        self._round: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    def add(self, tag: int) -> None:
        """Track a delivery the channel just received."""
        self.delivered.add(tag)
        self.order.append(tag)

    def floor(self) -> int | None:
        """The lowest delivery tag still unsettled."""
        order, delivered = self.order, self.delivered
        while order and order[0] not in delivered:
            order.popleft()
        return order[0] if order else None

    def settle(self, tag: int, *, requeue: bool | None = None) -> asyncio.Future[None]:
        """Ask for ``tag`` to be acked (``requeue`` None) or nacked; return its round.

        The round's future completes once the frame is written to the
        connection, or fails with :class:`ChannelInvalidStateError` when the
        channel closed first. Await it through :func:`asyncio.shield`: the
        round is shared.
        """
        if tag not in self.delivered:
            raise ChannelInvalidStateError(f"delivery tag {tag} is not unsettled on this channel")
        self.delivered.discard(tag)
        (self.acks if requeue is None else self.nacks).add(tag)
        loop = asyncio.get_running_loop()
        if self._round is None:
            self._round = loop.create_future()
            self._round.add_done_callback(_retrieve)
        if self._writer is None:
            self._writer = loop.create_task(self._write())
        return self._round

    async def drain(self) -> None:
        """Wait until everything asked for so far has been written (or has failed)."""
        writer = self._writer
        if writer is not None:
            await asyncio.shield(writer)

    def frames(self, acks: set[int], nacks: set[int]) -> list[Frame]:
        """The frames of one round, in the order they must reach the server."""
        frames: list[Frame] = [(tag, False, True) for tag in sorted(nacks)]
        floor = self.floor()
        below = [t for t in acks if floor is None or t < floor] if self.coalesce else []
        if below:
            frames.append((max(below), len(below) > 1, None))
        frames += [(tag, False, None) for tag in sorted(acks.difference(below))]
        return frames

    async def _write(self) -> None:
        try:
            while self._round is not None:
                done, self._round = self._round, None
                acks, self.acks = self.acks, set()
                nacks, self.nacks = self.nacks, set()
                try:
                    async with asyncio.timeout(self.timeout):
                        await self._send(self.frames(acks, nacks))
                except BaseException as exc:
                    self.coalesce = False
                    done.set_exception(
                        ChannelInvalidStateError(f"settling on a closed channel: {exc!r}")
                    )
                    if not isinstance(exc, Exception):
                        raise
                else:
                    done.set_result(None)
        finally:
            self._writer = None
            if self._round is not None:  # cancelled between rounds
                self._round.set_exception(ChannelInvalidStateError("the channel's writer stopped"))
                self._round = None

    async def _send(self, frames: list[Frame]) -> None:
        channel = self.channel
        if channel.is_closed:
            raise ChannelInvalidStateError("the channel has closed")
        last = len(frames) - 1
        for i, (tag, multiple, requeue) in enumerate(frames):
            # Only the last frame waits to be written: an ack that returned
            # reached the socket even if the process dies next.
            if requeue is None:
                await channel.basic_ack(tag, multiple=multiple, wait=i == last)
            else:
                await channel.basic_nack(tag, multiple=multiple, requeue=requeue, wait=i == last)
