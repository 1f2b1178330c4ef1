"""Cancelling messages anywhere: the broker's cancel log and each worker's watch on it.

``broker.cancel(message_id)`` appends the id to a log kept on the broker
(``Transport._cancel``: a Redis stream, a SQLite table, in-process on the
memory broker and on RabbitMQ). Every worker runs :meth:`CancelWatch.run` in
its task group, reading what was appended since its last look every
``POLL_INTERVAL`` seconds (``Transport._cancellations``). A message whose id
is in the log is refused before its actor runs; one already running in this
process is stopped: an async actor's task is cancelled, a sync actor gets
:class:`taskflow.Cancelled` raised in its thread. Either way the actor's call
raises ``Cancelled``: the message is dead-lettered with reason ``cancelled``,
never retried, its result raises ``ResultFailed`` of type ``Cancelled`` and
the pipeline or group holding it stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from taskflow.errors import Cancelled

if TYPE_CHECKING:
    from taskflow.broker import Broker

__all__ = ["CANCEL_TTL", "POLL_INTERVAL", "CancelWatch"]

logger = logging.getLogger("taskflow.cancellation")

#: Seconds a cancellation is kept on the broker (a delayed message may wait that long).
CANCEL_TTL = 7 * 24 * 3600.0
#: Seconds between two looks of a worker at the cancel log.
POLL_INTERVAL = 0.25
#: Most cancelled ids a worker remembers.
_REMEMBERED = 100_000

T = TypeVar("T")


class _Stop:
    """How to stop one running call; ``fired`` once it was asked to."""

    __slots__ = ("fired", "stop")

    def __init__(self, stop: Callable[[], None]) -> None:
        self.stop = stop
        self.fired = False

    def __call__(self) -> None:
        if not self.fired:
            self.fired = True
            self.stop()


class CancelWatch:
    """A worker's view of the cancel log, and the calls it can stop."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._cancelled: dict[str, None] = {}
        self._running: dict[str, _Stop] = {}
        self._cursor: str | None = None
        #: Whether :meth:`look_up` must be awaited before a message runs.
        self.lookups = broker._cancel_lookups()

    def check(self, message_id: str) -> None:
        """Raise :class:`Cancelled` when ``message_id`` was cancelled."""
        if message_id in self._cancelled:
            raise Cancelled(f"message {message_id} was cancelled")

    async def look_up(self, message_id: str) -> None:
        """Raise :class:`Cancelled` when the transport's store says ``message_id`` was cancelled.

        Only for transports whose signal can miss this worker
        (``lookups``); the others are covered by :meth:`check`.
        """
        if await self.broker._was_cancelled(message_id):
            self._add(message_id)
            raise Cancelled(f"message {message_id} was cancelled")

    def _add(self, message_id: str) -> None:
        self._cancelled[message_id] = None
        if len(self._cancelled) > _REMEMBERED:
            del self._cancelled[next(iter(self._cancelled))]
        stop = self._running.get(message_id)
        if stop is not None:
            logger.info("cancelling running message %s", message_id)
            stop()

    async def run_async(self, message_id: str, call: Coroutine[Any, Any, T]) -> T:
        """Await ``call``; its task is cancelled (``Cancelled`` raised) if the message is."""
        task = asyncio.current_task()
        assert task is not None
        stop = self._running[message_id] = _Stop(lambda: None if task.cancel() else None)
        cancelling = task.cancelling()
        try:
            return await call
        except asyncio.CancelledError:
            if stop.fired and task.uncancel() <= cancelling:
                raise Cancelled(f"message {message_id} was cancelled") from None
            raise
        finally:
            self._running.pop(message_id, None)

    async def run_thread(
        self, message_id: str, interrupt: Callable[[type[BaseException]], None], call: Any
    ) -> Any:
        """Await ``call`` (a thread's work); ``Cancelled`` is raised in the thread if cancelled."""
        self._running[message_id] = _Stop(lambda: interrupt(Cancelled))
        try:
            return await call
        finally:
            self._running.pop(message_id, None)

    async def poll(self) -> None:
        """Read what the cancel log gained since the last look, and act on it."""
        try:
            ids, self._cursor = await self.broker._cancellations(self._cursor)
        except Exception as exc:
            logger.warning("could not read cancellations (%s); trying again", exc)
            return
        for message_id in ids:
            self._add(message_id)

    async def run(self) -> None:
        """Follow the broker's cancel log until cancelled (a worker runs this)."""
        while True:
            await anyio.sleep(POLL_INTERVAL)
            await self.poll()
