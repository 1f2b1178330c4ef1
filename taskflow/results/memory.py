"""Results kept in the process's memory (the ``MemoryBroker``'s ``results=True``)."""

from __future__ import annotations

import time

import anyio

from taskflow.results import ResultBackend


class MemoryResults(ResultBackend):
    """Result backend in memory, for tests and single-process use."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._waiters: dict[str, anyio.Event] = {}

    async def _put(self, key: str, data: bytes, ttl: float) -> None:
        self._data[key] = (data, time.monotonic() + ttl)
        event = self._waiters.pop(key, None)
        if event is not None:
            event.set()

    def _lookup(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] < time.monotonic():
            del self._data[key]
            return None
        return item[0]

    async def _get(self, key: str, timeout: float | None) -> bytes | None:
        with anyio.move_on_after(timeout):
            while (data := self._lookup(key)) is None:
                event = self._waiters.setdefault(key, anyio.Event())
                await event.wait()
            return data
        return self._lookup(key)
