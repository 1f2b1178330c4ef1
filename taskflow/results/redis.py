"""Results in Redis: the ``RedisBroker``'s ``results=True``, usable with any broker.

Keys, under ``namespace`` (``{id}`` is a Redis Cluster hash tag, so a
result's keys live in one slot):

* ``<ns>:result:{<id>}``: the encoded record, with the result's TTL;
* ``<ns>:result:{<id>}:ready``: a one-element list, pushed in the same
  ``MULTI`` as the record, with the same TTL;
* ``<ns>:counter:<key>`` and ``<ns>:set:<key>``: the counters and sets of
  :meth:`~taskflow.results.ResultBackend.incr` and
  :meth:`~taskflow.results.ResultBackend.add`.

Waiting is push-based: a waiter that finds no record blocks in ``BLMOVE``
from the ready list to itself (in calls shorter than the client's socket
timeout, one after another, so a long wait costs one round trip every few
seconds). Moving the element onto the same list leaves
it in place, so one write wakes every waiter at once, and a write that lands
between the waiter's ``GET`` and its ``BLMOVE`` is still seen. Writes are
idempotent: writing a record again replaces it and leaves one element in
the ready list.
"""

from __future__ import annotations

import math
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskflow._urls import mask_url
from taskflow.errors import BrokerUnavailable
from taskflow.results import ResultBackend

#: redis-py's default socket timeout when a URL sets none.
_REDIS_SOCKET_TIMEOUT = 5.0


def _ms(ttl: float) -> int:
    return max(int(ttl * 1000), 1)


class RedisResults(ResultBackend):
    """Result backend in Redis.

    Args:
        url: ``redis://`` or ``rediss://`` URL of the server.
        namespace: Prefix of every key this backend writes.
        client: An existing ``redis.asyncio.Redis`` client to use instead of
            ``url`` (it is not closed by :meth:`close`).
        max_connections: Connections this backend opens at most; beyond
            that, calls wait for a free connection instead of failing (a
            worker storing hundreds of results at once must not error out).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "taskflow",
        client: aioredis.Redis | None = None,
        max_connections: int = 100,
    ) -> None:
        self.url = url
        self.max_connections = max_connections
        self.namespace = namespace
        self._client = client
        self._owns_client = client is None

    def __repr__(self) -> str:
        return f"RedisResults({mask_url(self.url)!r}, namespace={self.namespace!r})"

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client, created on first use."""
        if self._client is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=self.max_connections, timeout=30
            )
            self._client = aioredis.Redis.from_pool(pool)
        return self._client

    async def close(self) -> None:
        """Close the client this backend created."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _key(self, key: str) -> str:
        return f"{self.namespace}:result:{{{key}}}"

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except RedisError as exc:
            raise BrokerUnavailable(
                f"results at {mask_url(self.url)} failed: {type(exc).__name__}: {exc}"
            ) from exc

    # -- hooks ----------------------------------------------------------------

    async def _put(self, key: str, data: bytes, ttl: float) -> None:
        record, ready = self._key(key), self._key(key) + ":ready"
        ms = _ms(ttl)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(record, data, px=ms)
            pipe.delete(ready)
            pipe.lpush(ready, b"1")
            pipe.pexpire(ready, ms)
            await self._call(pipe.execute())

    async def _get(self, key: str, timeout: float | None) -> bytes | None:
        record = self._key(key)
        data: bytes | None = await self._call(self.client.get(record))
        if data is not None or (timeout is not None and timeout <= 0):
            return data
        ready = record + ":ready"
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = self._longest_block()
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left < 0.001:
                return None
            # Block no longer than the socket timeout allows; 0 means forever.
            block = math.inf if left is None else left
            if chunk is not None:
                block = min(block, chunk)
            if block == math.inf:
                block = 0.0
            if await self._wait_ready(ready, block) is not None:
                # Woken: the record is there, unless it expired in between.
                data = await self._call(self.client.get(record))
                return data

    async def _wait_ready(self, ready: str, block: float) -> bytes | str | None:
        # Redis takes fractional seconds; the stub says int.
        move = self.client.blmove(ready, ready, block, "RIGHT", "LEFT")  # type: ignore[arg-type]
        try:
            woken = await move
        except RedisTimeoutError:
            # The server answered later than the socket timeout (a busy
            # server is late to expire blocked calls). Moving the element
            # onto its own list loses nothing, so the next call sees it.
            return None
        except RedisError as exc:
            raise BrokerUnavailable(
                f"results at {mask_url(self.url)} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return woken

    def _longest_block(self) -> float | None:
        """Seconds one blocking call may last: under the socket timeout, if there is one."""
        kwargs = self.client.connection_pool.connection_kwargs
        socket_timeout = kwargs.get("socket_timeout", _REDIS_SOCKET_TIMEOUT)
        if socket_timeout is None:
            return None
        return max(float(socket_timeout) * 0.8, 0.05)

    async def _incr(self, key: str, ttl: float) -> int:
        counter = f"{self.namespace}:counter:{key}"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(counter)
            pipe.pexpire(counter, _ms(ttl))
            value, _ = await self._call(pipe.execute())
        return int(value)

    async def _add(self, key: str, member: str, ttl: float) -> int:
        members = f"{self.namespace}:set:{key}"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(members, member)
            pipe.pexpire(members, _ms(ttl))
            pipe.scard(members)
            _, _, size = await self._call(pipe.execute())
        return int(size)
