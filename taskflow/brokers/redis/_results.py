"""Results in Redis: the ``RedisBroker``'s ``results=True``, usable with any broker.

It connects the way the broker does (``_connection``): the same timeouts on
every call, TLS verification for ``rediss://``, the same ``redis_options``
(a CA file, a client certificate), and a bounded pool that makes callers
wait for a connection rather than open one per call. Calls that fail because
the server is unreachable, loading or full are repeated with the shared
backoff for ``retry_timeout`` seconds (``taskflow._retrying``): a results
outage shorter than that delays the storing of a value, and does not make
the actor that produced it run again.

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
seconds). Moving the element onto the same list leaves it in place, so one
write wakes every waiter at once, and a write that lands between the waiter's
``GET`` and its ``BLMOVE`` is still seen. Writes are idempotent: writing a
record again replaces it and leaves one element in the ready list.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskflow._retrying import GaveUp, Outage, retrying
from taskflow._urls import mask_url
from taskflow.brokers.redis._connection import (
    async_target_client,
    client_options,
    is_outage,
    outage_kind,
    parse_target,
)
from taskflow.errors import BrokerError, BrokerUnavailable
from taskflow.results import ResultBackend

logger = logging.getLogger("taskflow.results.redis")

T = TypeVar("T")

#: redis-py's default socket timeout when a URL sets none.
_REDIS_SOCKET_TIMEOUT = 5.0


#: SET NX PX returning the value already held (nil when this call stored its own).
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""


def _ms(ttl: float) -> int:
    return max(int(ttl * 1000), 1)


class RedisResults(ResultBackend):
    """Result backend in Redis.

    Args:
        url: ``redis://`` or ``rediss://`` URL of the server, or a
            ``redis+cluster://`` / ``redis+sentinel://`` URL as for the
            :class:`~taskflow.brokers.redis.RedisBroker` (each result's keys
            share the hash tag ``{<id>}``, so results spread over a Cluster).
        namespace: Prefix of every key this backend writes.
        client: An existing ``redis.asyncio.Redis`` (or ``RedisCluster``) client to use instead of
            ``url`` (it is not closed by :meth:`close`).
        max_connections: Connections this backend opens at most; beyond
            that, calls wait for a free connection instead of failing (a
            worker storing hundreds of results at once must not error out).
        socket_timeout: Seconds any one call may take.
        connect_timeout: Seconds to open a connection.
        retry_timeout: Seconds a call is repeated, in all, while the server
            is unreachable or full, before it raises ``BrokerUnavailable``.
        redis_options: Extra keyword arguments for the redis-py client (for
            example ``ssl_ca_certs``), as for the ``RedisBroker``.
        cluster: Treat a ``redis://`` URL as a seed node of a Redis Cluster.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "taskflow",
        client: aioredis.Redis | None = None,
        max_connections: int = 100,
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        retry_timeout: float = 30.0,
        redis_options: dict[str, Any] | None = None,
        cluster: bool = False,
    ) -> None:
        self.url = url
        self.target = parse_target(url, cluster=cluster)
        self.max_connections = max_connections
        self.namespace = namespace
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.retry_timeout = retry_timeout
        self._redis_options = dict(redis_options or {})
        self._client = client
        self._owns_client = client is None
        self._where = mask_url(url)
        self._outage = Outage(logger, "results", self._where, server="Redis")

    def __repr__(self) -> str:
        return f"RedisResults({self._where!r}, namespace={self.namespace!r})"

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client, created on first use."""
        if self._client is None:
            options = client_options(
                self.target.url,
                socket_timeout=self.socket_timeout,
                connect_timeout=self.connect_timeout,
                extra=self._redis_options,
            )
            self._client = async_target_client(
                self.target, options, max_connections=self.max_connections, wait=self.retry_timeout
            )
        return self._client

    async def close(self) -> None:
        """Close the client this backend created."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _forget_connections(self) -> None:
        if self._owns_client:
            self._client = None

    def _key(self, key: str) -> str:
        return f"{self.namespace}:result:{{{key}}}"

    async def _call(self, what: str, call: Callable[[], Awaitable[T]], *, repeat: bool = True) -> T:
        """Run ``call``, repeating it with backoff while the server is unreachable or full.

        ``repeat=False`` for a call that must not run twice (an increment whose
        reply was lost may have been applied): one attempt, bounded by the
        socket timeout.
        """
        try:
            return await retrying(
                call,
                transient=is_outage if repeat else lambda exc: False,
                outage=self._outage,
                timeout=self.retry_timeout,
                what=what,
                kind=outage_kind,
            )
        except GaveUp as exc:
            raise BrokerUnavailable(
                f"results at {self._where} failed to {what} within {self.retry_timeout} s "
                f"({exc.attempts} attempts; last error: {type(exc.last).__name__}: {exc.last})"
            ) from exc.last
        except RedisError as exc:
            error = BrokerUnavailable if is_outage(exc) else BrokerError
            raise error(
                f"results at {self._where} failed to {what}: {type(exc).__name__}: {exc}"
            ) from exc

    # -- hooks ----------------------------------------------------------------

    async def _put(self, key: str, data: bytes, ttl: float) -> None:
        record, ready = self._key(key), self._key(key) + ":ready"
        ms = _ms(ttl)

        async def put() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(record, data, px=ms)
                pipe.delete(ready)
                pipe.lpush(ready, b"1")
                pipe.pexpire(ready, ms)
                await pipe.execute()

        await self._call("store a result", put)

    async def _get(self, key: str, timeout: float | None) -> bytes | None:
        record = self._key(key)
        data = await self._read(record)
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
                return await self._read(record)

    async def _read(self, record: str) -> bytes | None:
        async def get() -> bytes | None:
            return await self.client.get(record)  # type: ignore[return-value]  # bytes: not decoded

        return await self._call("read a result", get)

    async def _wait_ready(self, ready: str, block: float) -> bytes | str | None:
        async def move() -> bytes | str | None:
            # Redis takes fractional seconds; the stub says int.
            call = self.client.blmove(ready, ready, block, "RIGHT", "LEFT")  # type: ignore[arg-type]
            try:
                return await call
            except RedisTimeoutError:
                # The server answered later than the socket timeout (a busy
                # server is late to expire blocked calls). Moving the element
                # onto its own list loses nothing, so the next call sees it.
                return None

        return await self._call("wait for a result", move)

    def _longest_block(self) -> float | None:
        """Seconds one blocking call may last: under the socket timeout, if there is one."""
        pool = getattr(self.client, "connection_pool", None)  # a Cluster has one per node
        if pool is None:
            return max(self.socket_timeout * 0.8, 0.05)
        socket_timeout = pool.connection_kwargs.get("socket_timeout", _REDIS_SOCKET_TIMEOUT)
        if socket_timeout is None:
            return None
        return max(float(socket_timeout) * 0.8, 0.05)

    async def _claim(self, key: str, data: bytes, ttl: float) -> bytes | None:
        record, ms = self._key(key), _ms(ttl)

        async def claim() -> Any:
            return await self.client.eval(_CLAIM, 1, record, data, ms)

        held = await self._call("claim a key", claim)
        # A repeated call whose first reply was lost finds its own data.
        return None if held is None or bytes(held) == data else bytes(held)

    async def _incr(self, key: str, ttl: float) -> int:
        counter = f"{self.namespace}:counter:{key}"

        async def incr() -> Any:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.incr(counter)
                pipe.pexpire(counter, _ms(ttl))
                return await pipe.execute()

        value, _ = await self._call("count", incr, repeat=False)
        return int(value)

    async def _add(self, key: str, member: str, ttl: float) -> int:
        members = f"{self.namespace}:set:{key}"

        async def add() -> Any:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.sadd(members, member)
                pipe.pexpire(members, _ms(ttl))
                pipe.scard(members)
                return await pipe.execute()

        _, _, size = await self._call("add to a set", add)
        return int(size)
