"""The hub's inspection methods: counts, dead letters, browsing, workers, join.

:class:`Inspecting` is a base of :class:`taskflow.Broker`; its methods call
the transport's ``_stats``, ``_dead_letters``, ``_browse``, ``_locate`` and
worker-registry hooks and turn what they return into the public types.
"""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from taskflow._inspection import (
    STATES,
    BrowseRecord,
    MessageInfo,
    State,
    WorkerInfo,
    decode_record,
    when,
    worker_info,
)
from taskflow._time import seconds
from taskflow._transport import QueueStats, Transport
from taskflow.errors import DecodeError, JoinTimeout
from taskflow.message import Message

if TYPE_CHECKING:
    from taskflow.message import Codec

__all__ = ["DeadLetter", "Inspecting"]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A dead-lettered message: the decoded message when it decodes, the raw body always."""

    id: str
    message: Message[Any] | None
    body: bytes
    reason: str
    dead_at: dt.datetime


class Inspecting(Transport):
    """Inspection and control of queues, on top of the transport hooks."""

    codec: Codec

    @abstractmethod
    async def connect(self) -> None:
        """Connect to the server (a no-op when connected)."""

    @property
    @abstractmethod
    def queues(self) -> list[str]:
        """The queues of the declared actors."""

    async def stats(self, queue: str) -> QueueStats:
        """Return the counts of ``queue``: ready, delayed, in flight and dead."""
        await self.connect()
        return await self._stats(queue)

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """Return up to ``limit`` dead letters of ``queue``, oldest first."""
        await self.connect()
        letters = []
        for record in await self._dead_letters(queue, limit):
            try:
                message: Message[Any] | None = self.codec.decode(record.body)
            except DecodeError:
                message = None
            letters.append(
                DeadLetter(
                    id=record.id,
                    message=message,
                    body=record.body,
                    reason=record.reason,
                    dead_at=dt.datetime.fromtimestamp(record.dead_at, dt.UTC),
                )
            )
        return letters

    async def requeue_dead(self, queue: str, ids: Iterable[str] | None = None) -> int:
        """Move dead letters (all, or those with ``ids``) back to the queue; return how many."""
        await self.connect()
        return await self._requeue_dead(queue, None if ids is None else list(ids))

    async def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue``; return how many."""
        await self.connect()
        return await self._purge(queue)

    async def purge_dead(self, queue: str) -> int:
        """Delete the dead letters of ``queue``; return how many."""
        await self.connect()
        return await self._purge_dead(queue)

    async def join(self, queue: str, *, timeout: float | dt.timedelta | None = None) -> None:
        """Wait until ``queue`` has nothing ready, delayed or in flight.

        Raises:
            JoinTimeout: ``timeout`` seconds passed first.
        """
        limit = None if timeout is None else seconds(timeout)
        interval = 0.005
        with anyio.move_on_after(limit) as scope:
            while True:
                s = await self.stats(queue)
                if s.ready == 0 and s.delayed == 0 and s.in_flight == 0:
                    return
                await anyio.sleep(interval)
                interval = min(interval * 1.5, 0.1)
        if scope.cancelled_caught:
            raise JoinTimeout(f"queue {queue!r} did not drain within {limit} s")

    async def browse(
        self, queue: str, state: State = "ready", limit: int = 50, offset: int = 0
    ) -> list[MessageInfo]:
        """Return up to ``limit`` messages of ``queue`` in ``state``, after ``offset``.

        ``state`` is ``ready`` (in delivery order), ``delayed`` (due first),
        ``in_flight`` (by lease expiry) or ``dead`` (newest first). The cost
        grows with ``offset + limit``, not with the queue's length.

        Raises:
            ValueError: an unknown state, or a negative limit or offset.
        """
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}: one of {', '.join(STATES)}")
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        await self.connect()
        records = await self._browse(queue, state, limit, offset) if limit else []
        return [self._message_info(queue, r) for r in records]

    async def get_message(self, message_id: str) -> MessageInfo | None:
        """Return the message ``message_id`` wherever it is (any queue, any state), or None.

        Raises:
            NotImplementedError: the broker cannot look everywhere (RabbitMQ
                sees only the messages its own process holds in flight) and
                did not find it.
        """
        await self.connect()
        unavailable: NotImplementedError | None = None
        for queue in await self.known_queues():
            try:
                record = await self._locate(queue, message_id)
            except NotImplementedError as exc:  # a server that can look in part only
                unavailable = exc
                continue
            if record is not None:
                return self._message_info(queue, record)
        if unavailable is not None:
            raise unavailable
        return None

    async def workers(self) -> list[WorkerInfo]:
        """Return the live workers of this broker, oldest first.

        Every :class:`taskflow.Worker` registers when it starts and renews
        its record at each heartbeat; a worker that stops is removed, one
        that dies is gone once its record expires (two heartbeats).
        """
        await self.connect()
        infos = []
        for raw in await self._worker_records():
            try:
                infos.append(worker_info(decode_record(raw)))
            except msgspec.DecodeError:
                continue
        return sorted(infos, key=lambda w: (w.started_at, w.id))

    def _message_info(self, queue: str, record: BrowseRecord) -> MessageInfo:
        try:
            message: Message[Any] | None = self.codec.decode(record.body)
        except DecodeError:
            message = None
        return MessageInfo(
            id=record.id,
            queue=queue,
            message=message,
            body=record.body,
            state=record.state,
            eta=when(record.eta),
            delivery_count=record.delivery_count,
            lease_owner=record.lease_owner,
            lease_expires_at=when(record.lease_expires_at),
            reason=record.reason,
            dead_at=when(record.dead_at),
        )

    async def known_queues(self) -> list[str]:
        """Queues the server knows of, with the declared actors' queues."""
        await self.connect()
        return sorted(set(await self._known_queues()) | set(self.queues))
