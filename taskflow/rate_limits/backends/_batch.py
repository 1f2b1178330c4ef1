"""Coalescing: many concurrent limiter operations, one round trip.

A worker running a hundred messages at once takes and gives back slots a
hundred at a time. Each ``submit`` joins the open batch; the first caller of
a batch leads it: it lets the current loop tick run (so operations started
together join), closes the batch and sends it through ``flush`` in one call
(one script on Redis, one transaction on SQLite). While one batch is on the
wire the next fills up, so batches follow the load with no timer, and a lone
caller costs one round trip as before.

Waiting is shielded: an operation that was sent is always seen through, so
a slot taken for a caller that is being cancelled still reaches it (and its
caller gives it back) instead of being lost until its ttl.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio

T = TypeVar("T")

MAX_BATCH = 256


class _Batch:
    __slots__ = ("done", "error", "items", "results")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.results: Sequence[Any] = ()
        self.error: BaseException | None = None
        self.done = asyncio.Event()


class Coalescer(Generic[T]):
    """Sends items in batches through ``flush``, which returns one result per item."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[Any]]]) -> None:
        self._flush = flush
        self._open: _Batch | None = None

    async def submit(self, item: T) -> Any:
        """Apply ``item`` with whatever else is pending; return its result.

        Raises:
            Exception: Whatever ``flush`` raised for the batch.
        """
        with anyio.CancelScope(shield=True):
            open_batch = self._open
            if open_batch is not None and len(open_batch.items) < MAX_BATCH:
                batch, index = open_batch, len(open_batch.items)
                batch.items.append(item)
                await batch.done.wait()
            else:
                batch, index = await self._lead(item), 0
        if batch.error is not None:
            raise batch.error
        return batch.results[index]

    async def _lead(self, item: T) -> _Batch:
        batch = self._open = _Batch()
        batch.items.append(item)
        await asyncio.sleep(0)  # let operations started in this tick join
        if self._open is batch:
            self._open = None
        try:
            batch.results = await self._flush(batch.items)
        except Exception as exc:
            batch.error = exc
        finally:
            batch.done.set()
        return batch
