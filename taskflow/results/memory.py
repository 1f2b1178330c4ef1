"""Results kept in the process's memory (the ``MemoryBroker``'s ``results=True``)."""

from __future__ import annotations

import time

import anyio

from taskflow.results import ResultBackend


class MemoryResults(ResultBackend):
    """Result backend in memory, for tests and single-process use."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._counters: dict[str, tuple[int, float]] = {}
        self._sets: dict[str, tuple[set[str], float]] = {}
        self._waiters: dict[str, anyio.Event] = {}
        self._next_sweep = 0.0

    def _sweep(self, now: float) -> None:
        """Drop expired entries, at most once a minute, so memory stays bounded."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60.0
        for store in (self._data, self._counters, self._sets):
            for key in [k for k, v in store.items() if v[1] < now]:
                del store[key]

    async def _put(self, key: str, data: bytes, ttl: float) -> None:
        now = time.monotonic()
        self._sweep(now)
        self._data[key] = (data, now + ttl)
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
                if timeout is not None and timeout <= 0:
                    break
                event = self._waiters.setdefault(key, anyio.Event())
                await event.wait()
            return data
        return self._lookup(key)

    async def _claim(self, key: str, data: bytes, ttl: float) -> bytes | None:
        held = self._lookup(key)
        if held is not None:
            return held
        await self._put(key, data, ttl)
        return None

    async def _incr(self, key: str, ttl: float) -> int:
        now = time.monotonic()
        value, expires = self._counters.get(key, (0, now))
        value = value + 1 if expires > now else 1
        self._counters[key] = (value, now + ttl)
        return value

    async def _add(self, key: str, member: str, ttl: float) -> int:
        now = time.monotonic()
        members, expires = self._sets.get(key, (set(), now))
        if expires <= now:
            members = set()
        members.add(member)
        self._sets[key] = (members, now + ttl)
        return len(members)
