"""Coalescing sends: many concurrent ``send()`` calls to one queue, one script call.

The same shape as the settle batcher (``_settle``): the first caller of a
batch leads it, lets the current loop turn run (so that sends made together
join), waits for the queue's previous batch, closes its batch and stores it
with one ENQUEUE call; while that call is on the wire the next batch fills.
Each caller returns only once Redis stored its messages (or raises what the
batch raised), so ``send`` keeps its promise. A lone sender pays two loop
turns; a hundred concurrent senders (a web app under load) pay one round
trip and one server command between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import anyio

from taskflow._transport import Envelope

#: Most messages in one batch (the ENQUEUE script's chunk).
MAX_BATCH = 1000

Store = Callable[[Sequence[Envelope]], Awaitable[None]]


class _Batch:
    __slots__ = ("envelopes", "error", "waiters")

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.error: BaseException | None = None
        self.waiters: list[asyncio.Future[None]] = []


class Sender:
    """Stores the sends to one queue in batches through ``store``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._open: _Batch | None = None
        self._lock: asyncio.Lock | None = None

    async def submit(self, envelopes: Sequence[Envelope]) -> None:
        """Store ``envelopes`` with whatever else is sent to the queue now.

        Raises:
            Exception: Whatever ``store`` raised for the batch.
        """
        batch = self._open
        if batch is not None and len(batch.envelopes) + len(envelopes) <= MAX_BATCH:
            batch.envelopes.extend(envelopes)
            waiter = asyncio.get_running_loop().create_future()
            batch.waiters.append(waiter)
            await waiter
        else:
            batch = self._open = _Batch()
            batch.envelopes.extend(envelopes)
            # Shielded: the followers' messages ride on this call.
            with anyio.CancelScope(shield=True):
                await self._lead(batch)
        if batch.error is not None:
            raise batch.error

    async def _lead(self, batch: _Batch) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        await asyncio.sleep(0)
        async with self._lock:
            if self._open is batch:
                self._open = None
            try:
                await self._store(batch.envelopes)
            except Exception as exc:
                batch.error = exc
            finally:
                for waiter in batch.waiters:
                    if not waiter.done():
                        waiter.set_result(None)
