"""Coalescing settlements: many concurrent acks, one script call.

Each ``submit`` joins the open batch. The first caller of a batch leads it: it
lets the current loop tick run (so acks finishing together join), waits until
the previous batch of the queue is applied, closes its batch and sends it in
one script call. While one call is on the wire the next batch fills up, so the
batch size follows the load by itself, with no timer. Every caller returns
only once Redis applied (or refused) its item.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio


class Op(enum.StrEnum):
    """What one settle item does; the value is the letter ``_scripts.SETTLE`` reads."""

    ACK = "a"
    DEAD_LETTER = "d"  # a: the reason
    RETRY = "r"  # a: the new body, b: delay ms
    REQUEUE = "q"  # counted as a delivery
    HAND_BACK = "u"  # fetched but never started: its delivery is undone
    DEFER = "f"  # b: delay ms; its delivery is undone
    START = "s"  # the worker starts running it (tells a crash's suspect from the fetched)

    @property
    def verb(self) -> str:
        """How log lines name it."""
        return _VERBS[self]


_VERBS = {
    Op.ACK: "ack",
    Op.DEAD_LETTER: "dead-letter",
    Op.RETRY: "retry",
    Op.REQUEUE: "requeue",
    Op.HAND_BACK: "hand back",
    Op.DEFER: "deferral",
    Op.START: "start",
}

Item = tuple[Op, Any, str, Any, int]  # op, id, token, a, b (see _scripts.SETTLE)
Flush = Callable[[Sequence[Item]], Awaitable[list[int]]]

MAX_BATCH = 500


class _Batch:
    __slots__ = ("error", "items", "results", "waiters")

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.results: list[int] = []
        self.error: Exception | None = None
        # A future per follower, so that a follower's cancellation touches no one else.
        self.waiters: list[asyncio.Future[None]] = []


class Settler:
    """Sends the settlements of one queue in batches through ``flush``."""

    def __init__(self, flush: Flush) -> None:
        self._flush = flush
        self._open: _Batch | None = None
        self._lock: asyncio.Lock | None = None

    async def submit(self, item: Item) -> int:
        """Apply ``item``; return its status code from the settle script.

        Raises:
            Exception: Whatever ``flush`` raised for the batch.
        """
        batch = self._open
        if batch is not None and len(batch.items) < MAX_BATCH:
            index = len(batch.items)
            batch.items.append(item)
            waiter = asyncio.get_running_loop().create_future()
            batch.waiters.append(waiter)
            await waiter
        else:
            index = 0
            batch = self._open = _Batch()
            batch.items.append(item)
            # Shielded: followers wait for this batch, so it must go out.
            with anyio.CancelScope(shield=True):
                await self._lead(batch)
        if batch.error is not None:
            raise batch.error
        return batch.results[index]

    async def _lead(self, batch: _Batch) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        await asyncio.sleep(0)
        async with self._lock:
            # The previous batch's callers were just woken: let them run on
            # and join this batch rather than each start a small one.
            await asyncio.sleep(0)
            if self._open is batch:
                self._open = None
            try:
                batch.results = await self._flush(batch.items)
            except Exception as exc:
                batch.error = exc
            finally:
                for waiter in batch.waiters:
                    if not waiter.done():
                        waiter.set_result(None)
