"""Rate-limit state in Redis: one Lua script per operation, timed by Redis's clock.

Keys, under ``<namespace>:ratelimit:``:

* ``c:<key>`` and ``w:<key>``: sorted sets of holders (concurrent) or events
  (window), scored by when each expires, in milliseconds of Redis ``TIME``.
  Expired members are dropped by the next operation on the key, so a dead
  holder is released by its own ``ttl`` even while others keep taking and
  giving back slots; the key itself expires with its last member.
* ``b:<key>``: a hash with the current bucket's number and count, expiring
  at the bucket's end.
* ``<kind>:<key>:line``: the key's line of waiters, a sorted set scored by
  when each first found the key full.
* ``barrier:<key>`` (a hash of parties and arrivals) and
  ``barrier:<key>:released`` (a one-element list, pushed by the last
  arrival; waiters block in ``BLMOVE`` from it to itself, so one push wakes
  every waiter, as in :mod:`taskflow.results.redis`).

Taking, giving back and counting go through one script, ``OPERATIONS``;
operations that many messages start at once are sent together, in one
``EVALSHA`` round trip (``_batch``), and a lone one is a round trip of its
own. Its keys travel in ``ARGV``, so the script is not for Redis Cluster.
Sync actors use a blocking client with the same settings.
"""

from __future__ import annotations

import time
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from taskflow._urls import mask_url
from taskflow.errors import BrokerUnavailable
from taskflow.rate_limits.backends import LINE_TTL, Full, RateLimitBackend
from taskflow.rate_limits.backends._batch import Coalescer

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# ARGV: the line's ttl ms, then operations of six values each: op, key,
# holder, limit, ms, waiter ('' for none). Ops: t = take a slot or a window
# event (ms: ttl or window), b = count in a bucket (ms: the bucket), r =
# release a slot. Returns one reply per operation: -1 when taken (or
# released), else {ms until there may be room, waiters ahead in the line}.
OPERATIONS = (
    _NOW
    + """
local line_ttl = tonumber(ARGV[1])

local function take(key, holder, limit, ms)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if not redis.call('ZSCORE', key, holder) and redis.call('ZCARD', key) >= limit then
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return math.max(tonumber(first[2]) - now, 0)
  end
  redis.call('ZADD', key, now + ms, holder)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', key, last[2])
  return -1
end

local function bucket(key, limit, size)
  local number = math.floor(now / size)
  local cur = redis.call('HMGET', key, 'b', 'n')
  local used = 0
  if tonumber(cur[1]) == number then used = tonumber(cur[2]) end
  if used >= limit then return (number + 1) * size - now end
  redis.call('HSET', key, 'b', number, 'n', used + 1)
  redis.call('PEXPIREAT', key, (number + 1) * size)
  return -1
end

-- Leave the key's line on room; on none, join it (once) and say one's place.
local function line(key, waiter, wait)
  if waiter == '' then
    if wait < 0 then return -1 end
    return {wait, 0}
  end
  local queue = key .. ':line'
  if wait < 0 then
    redis.call('ZREM', queue, waiter)
    return -1
  end
  redis.call('ZREMRANGEBYSCORE', queue, '-inf', now - line_ttl)
  redis.call('ZADD', queue, 'NX', now, waiter)
  redis.call('PEXPIRE', queue, line_ttl)
  return {wait, redis.call('ZRANK', queue, waiter)}
end

local out = {}
for i = 2, #ARGV, 6 do
  local op, key = ARGV[i], ARGV[i + 1]
  local limit, ms = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  if op == 't' then
    out[#out + 1] = line(key, ARGV[i + 5], take(key, ARGV[i + 2], limit, ms))
  elseif op == 'b' then
    out[#out + 1] = line(key, ARGV[i + 5], bucket(key, limit, ms))
  else
    redis.call('ZREM', key, ARGV[i + 2])
    out[#out + 1] = -1
  end
end
return out
"""
)

# KEYS: hash, released list. ARGV: parties, ttl ms. Returns 1 when created.
BARRIER_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'parties', ARGV[1], 'arrived', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: hash, released list. Returns -1 without a barrier, 1 when released.
BARRIER_ARRIVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local arrived = redis.call('HINCRBY', KEYS[1], 'arrived', 1)
if arrived < tonumber(redis.call('HGET', KEYS[1], 'parties')) then return 0 end
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('RPUSH', KEYS[2], 1)
  redis.call('PEXPIRE', KEYS[2], math.max(redis.call('PTTL', KEYS[1]), 1))
end
return 1
"""

_CARRIED = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
)

_SCRIPTS = {"operations": OPERATIONS, "create": BARRIER_CREATE, "arrive": BARRIER_ARRIVE}

Operation = tuple[str, str, str, int, int, str]

#: Longest single blocking call while waiting on a barrier, under the socket timeout.
_BLOCK = 2.0


def _unknown(full: Full | None) -> Full | None:
    """A concurrent slot's ``retry_after`` is unknown: when a holder finishes."""
    return None if full is None else full._replace(retry_after=0.0)


def _ms(value: float) -> int:
    return max(int(value * 1000), 1)


def _full(reply: Any) -> Full | None:
    if isinstance(reply, list):
        return Full(int(reply[0]) / 1000, int(reply[1]))
    return None


class RedisBackend(RateLimitBackend):
    """Rate-limit state in Redis (6.2 or later), shared by every worker that reaches it.

    Args:
        url: ``redis://`` / ``rediss://`` URL, or an existing
            ``redis.asyncio.Redis`` or ``redis.Redis`` client (not closed by
            :meth:`close`).
        namespace: Prefix of every key.
        max_connections: Connections the async client opens at most; beyond
            that, operations wait for a free one.
        socket_timeout: Seconds any one call may take.
    """

    def __init__(
        self,
        url: str | aioredis.Redis | redis.Redis = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "taskflow",
        max_connections: int = 100,
        socket_timeout: float = 5.0,
    ) -> None:
        self.namespace = namespace
        self.max_connections = max_connections
        self.socket_timeout = socket_timeout
        self._async: aioredis.Redis | None = None
        self._sync: redis.Redis | None = None
        self._owned = True
        if isinstance(url, str):
            self.url = url
        else:
            self.url = "redis://(client)"
            self._owned = False
            if isinstance(url, aioredis.Redis):
                self._async = url
            else:
                self._sync = url
        self._scripts: dict[str, Any] = {}
        self._sync_scripts: dict[str, Any] = {}
        self._batch: Coalescer[Operation] = Coalescer(self._flush)

    def __repr__(self) -> str:
        return f"RedisBackend({mask_url(self.url)!r}, namespace={self.namespace!r})"

    # -- clients --------------------------------------------------------------

    def _kwargs(self) -> dict[str, Any]:
        source = self._async if self._async is not None else self._sync
        if source is None:
            return {}
        # The other flavour's pool takes other options: carry over only these.
        kwargs = source.connection_pool.connection_kwargs
        return {k: kwargs[k] for k in _CARRIED if k in kwargs}

    @property
    def client(self) -> aioredis.Redis:
        """The asyncio client, created on first use."""
        if self._async is None:
            if not self._owned:
                self._async = aioredis.Redis(**self._kwargs())
            else:
                pool = aioredis.BlockingConnectionPool.from_url(
                    self.url,
                    max_connections=self.max_connections,
                    timeout=30,
                    socket_timeout=self.socket_timeout,
                    socket_connect_timeout=self.socket_timeout,
                )
                self._async = aioredis.Redis.from_pool(pool)
        return self._async

    @property
    def sync_client(self) -> redis.Redis:
        """The blocking client for sync actors, created on first use."""
        if self._sync is None:
            if not self._owned:
                self._sync = redis.Redis(**self._kwargs())
            else:
                self._sync = redis.Redis.from_url(
                    self.url,
                    socket_timeout=self.socket_timeout,
                    socket_connect_timeout=self.socket_timeout,
                )
        return self._sync

    async def close(self) -> None:
        """Close the clients this backend created."""
        if self._owned:
            client, self._async = self._async, None
            if client is not None:
                await client.aclose()
            sync, self._sync = self._sync, None
            if sync is not None:
                sync.close()
        self._scripts.clear()
        self._sync_scripts.clear()

    def _key(self, kind: str, key: str) -> str:
        return f"{self.namespace}:ratelimit:{kind}:{key}"

    def _error(self, exc: RedisError) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"rate limits at {mask_url(self.url)} failed: {type(exc).__name__}: {exc}"
        )

    async def _eval(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(_SCRIPTS[name])
        try:
            return await script(keys=keys, args=args)
        except RedisError as exc:
            raise self._error(exc) from exc

    def _eval_sync(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self._sync_scripts.get(name)
        if script is None:
            script = self._sync_scripts[name] = self.sync_client.register_script(_SCRIPTS[name])
        try:
            return script(keys=keys, args=args)
        except RedisError as exc:
            raise self._error(exc) from exc

    # -- operations -----------------------------------------------------------

    async def _flush(self, operations: list[Operation]) -> list[Any]:
        args: list[Any] = [_ms(LINE_TTL)]
        args += [value for operation in operations for value in operation]
        replies: list[Any] = await self._eval("operations", [], args)
        return replies

    async def _apply(self, operation: Operation) -> Full | None:
        return _full(await self._batch.submit(operation))

    def _apply_sync(self, operation: Operation) -> Full | None:
        [reply] = self._eval_sync("operations", [], [_ms(LINE_TTL), *operation])
        return _full(reply)

    def _hold(self, key: str, holder: str, limit: int, ttl: float, waiter: str | None) -> Operation:
        return ("t", self._key("c", key), holder, limit, _ms(ttl), waiter or "")

    async def hold(
        self, key: str, holder: str, limit: int, ttl: float, waiter: str | None = None
    ) -> Full | None:
        """Take a slot; see :meth:`RateLimitBackend.hold`."""
        return _unknown(await self._apply(self._hold(key, holder, limit, ttl, waiter)))

    def hold_sync(
        self, key: str, holder: str, limit: int, ttl: float, waiter: str | None = None
    ) -> Full | None:
        """Take a slot; see :meth:`RateLimitBackend.hold`."""
        return _unknown(self._apply_sync(self._hold(key, holder, limit, ttl, waiter)))

    async def release(self, key: str, holder: str) -> None:
        """Give a slot back; see :meth:`RateLimitBackend.release`."""
        await self._apply(("r", self._key("c", key), holder, 0, 0, ""))

    def release_sync(self, key: str, holder: str) -> None:
        """Give a slot back; see :meth:`RateLimitBackend.release`."""
        self._apply_sync(("r", self._key("c", key), holder, 0, 0, ""))

    def _window(
        self, key: str, holder: str, limit: int, window: float, waiter: str | None
    ) -> Operation:
        return ("t", self._key("w", key), holder, limit, _ms(window), waiter or "")

    async def hit_window(
        self, key: str, holder: str, limit: int, window: float, waiter: str | None = None
    ) -> Full | None:
        """Record an event in a sliding window; see :meth:`RateLimitBackend.hit_window`."""
        return await self._apply(self._window(key, holder, limit, window, waiter))

    def hit_window_sync(
        self, key: str, holder: str, limit: int, window: float, waiter: str | None = None
    ) -> Full | None:
        """Record an event in a sliding window; see :meth:`RateLimitBackend.hit_window`."""
        return self._apply_sync(self._window(key, holder, limit, window, waiter))

    def _bucket(self, key: str, limit: int, bucket: float, waiter: str | None) -> Operation:
        return ("b", self._key("b", key), "", limit, _ms(bucket), waiter or "")

    async def hit_bucket(
        self, key: str, limit: int, bucket: float, waiter: str | None = None
    ) -> Full | None:
        """Count an event in a fixed bucket; see :meth:`RateLimitBackend.hit_bucket`."""
        return await self._apply(self._bucket(key, limit, bucket, waiter))

    def hit_bucket_sync(
        self, key: str, limit: int, bucket: float, waiter: str | None = None
    ) -> Full | None:
        """Count an event in a fixed bucket; see :meth:`RateLimitBackend.hit_bucket`."""
        return self._apply_sync(self._bucket(key, limit, bucket, waiter))

    def _barrier_keys(self, key: str) -> list[str]:
        hash_key = self._key("barrier", key)
        return [hash_key, hash_key + ":released"]

    async def barrier_create(self, key: str, parties: int, ttl: float) -> bool:
        """Create a barrier; see :meth:`RateLimitBackend.barrier_create`."""
        reply = await self._eval("create", self._barrier_keys(key), [parties, _ms(ttl)])
        return int(reply) == 1

    async def barrier_arrive(self, key: str) -> bool:
        """Count a party in; see :meth:`RateLimitBackend.barrier_arrive`."""
        reply = int(await self._eval("arrive", self._barrier_keys(key), []))
        if reply < 0:
            raise LookupError(f"no barrier {key!r}")
        return reply == 1

    async def barrier_wait(self, key: str, timeout: float) -> bool:
        """Wait for a release; see :meth:`RateLimitBackend.barrier_wait`."""
        released = self._barrier_keys(key)[1]
        deadline = time.monotonic() + timeout
        try:
            while True:
                if await self.client.llen(released):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                block = min(left, _BLOCK, self.socket_timeout * 0.8)
                # Redis takes fractional seconds; the stub says int.
                move = self.client.blmove(released, released, block, "RIGHT", "LEFT")  # type: ignore[arg-type]
                if await move is not None:
                    return True
        except RedisError as exc:
            raise self._error(exc) from exc
