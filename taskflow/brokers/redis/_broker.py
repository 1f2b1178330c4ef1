"""RedisBroker: leases, delays, priorities and dead letters on sorted sets and hashes.

Why sorted sets, not lists or streams: priorities (higher first) need an
ordered structure, and a queue must answer "which leases have expired" by the
server's clock. Streams order by id only, and ``XACK`` accepts an ack from any
consumer of the group, so a late ack from a worker that lost its lease cannot
be refused; lists would need one list per priority. Sorted sets give all of it
in ``O(log n)``:

* ``ready`` (score ``-priority``; equal scores pop in member order, and ids are
  time-ordered, so FIFO within a priority), ``delayed`` (score: due time) and
  ``inflight`` (score: lease deadline) say where each message is;
* hashes keep the body, the server-side delivery count, the priority and the
  lease token of the consumer that holds it;
* ``dead`` (score: when) with two hashes keeps dead letters and their reasons.

A message id is in exactly one of ``ready``, ``delayed``, ``inflight`` and
``dead``, and every move is one Lua script (``_scripts``), loaded once and
called by SHA. Time inside scripts is Redis's ``TIME``. All keys of a namespace
share the hash tag ``{namespace}``.

Consuming: one script call promotes due delayed messages, then takes up to
``prefetch`` messages, leasing each to a fresh token for
``visibility_timeout``. An idle consumer blocks on the queue's notify list
(``BLPOP``), which every script that makes messages ready pushes to, so it
wakes at once, or when the next delayed message is due. Acks, retries and
dead-letters from concurrent deliveries are coalesced into one script call
(``_settle``), and each applies only if the lease token still matches
(fencing): otherwise :class:`taskflow.LeaseLost`.

Leases are renewed, and the reaper run, by a thread with its own blocking
client (``_keeper``), so a blocked event loop or a long sync actor cannot let
healthy work be re-run.

Clocks: every lease deadline, due time and dead-letter age is Redis's
``TIME``, read inside the script that uses it, so the clocks of workers and
producers never matter (a relative delay is added to ``TIME`` at enqueue).
``TIME`` is the Redis host's wall clock, not a monotonic one: a step forward
expires leases early (their messages run again, each logged ``lease_lost``,
at most what was in flight), a step back keeps a dead worker's messages and
delayed messages waiting longer by the step. Slewing NTP on the Redis host
moves nothing.

Poison: a delivery counts when it is fetched, and is given back if the
message never started (the worker calls ``Receipt.start`` right before it
runs it). A message that was running when its worker died is a suspect
(``_scripts.reap``): suspects are fetched apart from fresh work, in groups
that halve with each crash they were part of, alone when their next
delivery is their last, and their consumer fetches nothing else until the
group is settled. So a message that kills its worker takes no fresh message
with it, and only it reaches ``max_deliveries``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import redis
import redis.asyncio

from taskflow._inspection import BrowseRecord, State
from taskflow._retrying import GaveUp, Outage, retrying
from taskflow._time import seconds
from taskflow._transport import DeadRecord, Envelope, QueueStats, Receipt
from taskflow._urls import mask_url
from taskflow.broker import GROWTH_ALLOWANCE, Broker
from taskflow.brokers.redis import _inspect, _scripts
from taskflow.brokers.redis._connection import (
    NotReplicated,
    async_target_client,
    client_options,
    is_full,
    is_outage,
    outage_kind,
    parse_target,
)
from taskflow.brokers.redis._keeper import Keeper, LeaseTable
from taskflow.brokers.redis._keys import Keys
from taskflow.brokers.redis._queue import CHUNK, Quarantine, Queue, RedisReceipt, to_ms
from taskflow.brokers.redis._results import RedisResults
from taskflow.brokers.redis._sending import Sender
from taskflow.brokers.redis._settle import Item
from taskflow.errors import BrokerError, BrokerUnavailable
from taskflow.results import store_refusal

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from taskflow.results import ResultBackend

logger = logging.getLogger("taskflow.brokers.redis")

T = TypeVar("T")

_SCRIPTS = {
    "enqueue": _scripts.ENQUEUE,
    "fetch": _scripts.FETCH,
    "settle": _scripts.SETTLE,
    "stats": _scripts.STATS,
    "dead_letters": _scripts.DEAD_LETTERS,
    "requeue_dead": _scripts.REQUEUE_DEAD,
    "purge": _scripts.PURGE,
    "purge_dead": _scripts.PURGE_DEAD,
    **_inspect.SCRIPTS,
}


#: Claim one fire time (SET NX EX) and, when claimed, raise the schedule's last fire.
_CLAIM_FIRE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return 0 end
local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) > last then redis.call('SET', KEYS[2], ARGV[1]) end
return 1
"""


#: Hold a unique key unless held (SET NX PX); return the holder's id, or nil when claimed.
_UNIQUE_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
#: Let a unique key go after ARGV[2] ms (at once for 0) if ARGV[1] still holds it.
_UNIQUE_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class RedisBroker(Broker):
    """A broker on Redis (6.0 or later), through redis-py's asyncio client.

    Args:
        url: ``redis://[user:password@]host:port/db`` or ``rediss://`` for TLS
            (certificate and host name verified); ``redis+cluster://h1:p1,h2:p2/0``
            for a Redis Cluster (any reachable nodes as seeds); and
            ``redis+sentinel://s1:26379,s2:26379/mymaster/0`` for the master that
            the sentinels name (``rediss+...`` for TLS to the data nodes).
            One namespace lives on one Cluster shard (its keys share the hash
            tag ``{namespace}``); spread load with several namespaces.
        namespace: Prefix of every key; brokers in different namespaces share nothing.
        visibility_timeout: Seconds a fetched message stays leased to its
            consumer without a heartbeat; a dead worker's messages come back
            after it (plus at most ``reaper_interval``).
        heartbeat_interval: Seconds between lease renewals (default: a third
            of ``visibility_timeout``).
        reaper_interval: Longest time, in seconds, between two runs of the
            reaper, which returns expired leases, promotes due delayed
            messages and drops expired dead letters.
        socket_timeout: Seconds any one call may take.
        connect_timeout: Seconds to open a connection.
        send_timeout: Seconds a ``send`` (and any other call outside the
            consumer) may take in all, retries while the server is unreachable
            included, before it raises ``BrokerUnavailable``. A ``send_many``
            is one call: split very large batches so each fits in it.
        idle_timeout: Longest single blocking wait of an idle consumer, in seconds.
        max_connections: Connections the broker's pool opens at most (blocking
            waits of idle consumers and the heartbeat thread have their own);
            beyond that, callers wait for a free one, within ``send_timeout``.
        redis_options: Extra keyword arguments for the redis-py clients (for
            example ``ssl_ca_certs``; ``sentinel_kwargs`` for the sentinels' own).
        cluster: Treat a ``redis://`` URL as a seed node of a Redis Cluster.
        wait_replicas: With ``n > 0``, ``send`` returns only once ``n`` replicas
            acknowledged the message (Redis ``WAIT``); until then it retries,
            within ``send_timeout``, and then raises ``BrokerUnavailable``.
            Narrows, but does not close, the window in which a failover loses
            an acknowledged send (``WAIT`` is not a consensus protocol).
        **options: Passed to :class:`taskflow.Broker` (``max_deliveries``,
            ``dead_letter_ttl``, ``results``, ...).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "taskflow",
        visibility_timeout: float | dt.timedelta = 30.0,
        heartbeat_interval: float | dt.timedelta | None = None,
        reaper_interval: float | dt.timedelta = 5.0,
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        send_timeout: float = 10.0,
        idle_timeout: float = 2.0,
        max_connections: int = 64,
        redis_options: dict[str, Any] | None = None,
        cluster: bool = False,
        wait_replicas: int = 0,
        **options: Any,
    ) -> None:
        self.url = url
        self.target = parse_target(url, cluster=cluster)
        if wait_replicas < 0:
            raise ValueError("wait_replicas must be 0 or more")
        if wait_replicas and self.target.kind == "cluster":
            raise ValueError("wait_replicas is not supported on a Redis Cluster")
        self.wait_replicas = wait_replicas
        self.namespace = namespace
        self._keys = Keys(namespace)
        self.visibility_timeout = seconds(visibility_timeout)
        if self.visibility_timeout <= 0:
            raise ValueError("visibility_timeout must be positive")
        self.heartbeat_interval = (
            self.visibility_timeout / 3
            if heartbeat_interval is None
            else seconds(heartbeat_interval)
        )
        if not 0 < self.heartbeat_interval < self.visibility_timeout:
            raise ValueError("heartbeat_interval must be positive and below visibility_timeout")
        self.reaper_interval = seconds(reaper_interval)
        if self.reaper_interval <= 0:
            raise ValueError("reaper_interval must be positive")
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.idle_timeout = idle_timeout
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self._redis_options = dict(redis_options or {})
        super().__init__(**options)
        self._where = mask_url(url)
        self._client: redis.asyncio.Redis | None = None
        self._blocking: redis.asyncio.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._queues: dict[str, Queue] = {}
        self._tables: dict[str, LeaseTable] = {}
        self._keeper: Keeper | None = None
        self._consumer_id = ""
        self._fetches = 0
        self._settles = 0
        self._forgetting: asyncio.Future[None] | None = None
        self._senders: dict[str, Sender] = {}
        self._producer_outage = self._outage("producer")

    def __repr__(self) -> str:
        return f"RedisBroker({self._where!r}, namespace={self.namespace!r})"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build from ``redis://``, ``rediss://``, ``redis+cluster://`` or ``redis+sentinel://``."""
        return cls(url, **options)

    def _default_results(self) -> ResultBackend:
        return RedisResults(
            self.url,
            cluster=self.target.kind == "cluster",
            namespace=self.namespace,
            socket_timeout=self.socket_timeout,
            connect_timeout=self.connect_timeout,
            redis_options=self._redis_options,
        )

    @property
    def keeper(self) -> Keeper | None:
        """The heartbeat and reaper thread, once a consumer started it."""
        return self._keeper

    # -- connection ---------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        return client_options(
            self.target.url,
            socket_timeout=self.socket_timeout,
            connect_timeout=self.connect_timeout,
            extra=self._redis_options,
        )

    async def _connect(self) -> None:
        options = self._client_options()
        self._client = async_target_client(
            self.target, options, max_connections=self.max_connections, wait=self.send_timeout
        )
        # Blocking reads wait up to idle_timeout; their socket timeout must be longer.
        self._blocking = async_target_client(
            self.target, {**options, "socket_timeout": self.socket_timeout + self.idle_timeout}
        )
        self._scripts = {name: self._client.register_script(src) for name, src in _SCRIPTS.items()}
        self._consumer_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        try:
            await self._retrying("connect", self._load_scripts)
        except BaseException:
            await self._close()
            raise
        await self._check_server()

    async def _load_scripts(self) -> None:
        assert self._client is not None
        if self.target.kind == "cluster":
            # SCRIPT LOAD goes to every primary; a pipeline would pick one node.
            for script in self._scripts.values():
                await self._client.script_load(script.script)
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for script in self._scripts.values():
                pipe.script_load(script.script)
            await pipe.execute()

    async def _check_server(self) -> None:
        assert self._client is not None
        if self.target.kind == "cluster":
            return  # CONFIG and INFO answer per node there
        try:
            config: dict[Any, Any] = await self._client.config_get("maxmemory-policy")
        except redis.RedisError as exc:
            logger.debug("cannot read maxmemory-policy: %s", exc)
            return
        policy = _text(config.get("maxmemory-policy") or config.get(b"maxmemory-policy") or "")
        if policy.startswith(("allkeys-", "volatile-")):
            what = "taskflow's keys" if policy.startswith("allkeys-") else "keys with a TTL"
            logger.warning(
                "Redis at %s has maxmemory-policy %s: it may evict %s (messages, results, "
                "the reaper's lock) when memory runs out; set it to noeviction",
                self._where,
                policy,
                what,
            )
        try:
            aof = (await self._client.info("persistence")).get("aof_enabled")
        except redis.RedisError:
            return
        if not aof:
            logger.info(
                "Redis at %s runs without AOF: a crash may lose recent messages", self._where
            )

    async def _close(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await anyio.to_thread.run_sync(keeper.stop)
        self._queues.clear()
        self._senders.clear()
        self._tables.clear()
        for client in (self._client, self._blocking):
            if client is not None:
                await client.aclose()
        self._client = self._blocking = None

    def _outage(self, what: str) -> Outage:
        return Outage(logger, what, self._where, server="Redis")

    def _forget_connections(self) -> None:
        super()._forget_connections()
        self._client = self._blocking = None
        self._keeper = None
        self._queues = {}
        self._tables = {}

    def _queue(self, name: str) -> Queue:
        q = self._queues.get(name)
        if q is None:
            table = self._tables.get(name)
            if table is None:
                table = self._tables[name] = LeaseTable(name, self._keys.queue(name))
            q = self._queues[name] = Queue(self, name, table)
        return q

    async def _retrying(
        self, what: str, call: Callable[[], Awaitable[T]], outage: Outage | None = None
    ) -> T:
        """Run ``call``, repeating it while the server is unreachable or full, for ``send_timeout``.

        Raises:
            BrokerUnavailable: No success within ``send_timeout`` (a frozen
                server included: the whole loop is under that deadline).
            BrokerError: The server refused the call (permissions, a bad script, ...).
        """
        try:
            return await retrying(
                call,
                transient=self._transient,
                outage=outage or self._producer_outage,
                timeout=self.send_timeout,
                what=what,
                kind=outage_kind,
            )
        except GaveUp as exc:
            why = "was full (maxmemory) and refused" if is_full(exc.last) else "did not take"
            raise BrokerUnavailable(
                f"Redis at {self._where} {why} {what} for {self.send_timeout} s "
                f"({exc.attempts} failed attempts; last error: {exc.last})"
            ) from exc.last
        except redis.RedisError as exc:
            raise BrokerError(f"Redis at {self._where} refused {what}: {exc}") from exc

    def _transient(self, exc: BaseException) -> bool:
        """``is_outage``, and after a lost connection, drop the idle ones of the pool.

        A server that restarted closed them all; reused one by one, each
        would fail once more, and a bounded pool hands them out in turn.
        """
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
            self._forget_idle()
        return is_outage(exc)

    def _forget_idle(self) -> None:
        pool = getattr(self._client, "connection_pool", None)  # a Cluster has one per node
        if pool is not None and self._forgetting is None:
            forget = pool.disconnect(inuse_connections=False)
            self._forgetting = asyncio.ensure_future(forget)
            self._forgetting.add_done_callback(self._forgot)

    def _forgot(self, task: asyncio.Future[None]) -> None:
        self._forgetting = None
        if not task.cancelled():
            task.exception()  # retrieved: a failure to close a dead socket is no news

    async def _script(self, name: str, keys: list[str], args: Sequence[Any]) -> Any:
        return await self._scripts[name](keys=keys, args=args)

    # -- producing ----------------------------------------------------------

    async def _enqueue(self, queue: str, envelopes: Sequence[Envelope]) -> None:
        if len(envelopes) >= CHUNK:
            await self._store(queue, envelopes)
            return
        sender = self._senders.get(queue)
        if sender is None:
            sender = self._senders[queue] = Sender(functools.partial(self._store, queue))
        await sender.submit(envelopes)

    async def _store(self, queue: str, envelopes: Sequence[Envelope]) -> None:
        """Store ``envelopes`` in as few script calls as the chunk size allows, in one round trip."""
        keys = self._keys.queue(queue)
        chunks: list[list[Any]] = [
            [
                queue,
                _scripts.pack(
                    [
                        (e.id, _scripts.raw_str(e.body), e.priority, to_ms(e.delay))
                        for e in envelopes[start : start + CHUNK]
                    ]
                ),
            ]
            for start in range(0, len(envelopes), CHUNK)
        ]
        await self._retrying("send", lambda: self._send_chunks(keys, chunks))

    async def _send_chunks(self, keys: list[str], chunks: list[list[Any]]) -> None:
        if len(chunks) == 1 and not self.wait_replicas:
            await self._script("enqueue", keys, chunks[0])
            return
        # One round trip: the scripts are pipelined, not wrapped in MULTI.
        assert self._client is not None
        sha = self._scripts["enqueue"].sha
        for attempt in range(2):
            async with self._client.pipeline(transaction=False) as pipe:
                for args in chunks:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                if self.wait_replicas:
                    # WAIT counts the writes of its own connection: same pipeline.
                    wait_ms = max(1, to_ms(min(1.0, self.socket_timeout / 2)))
                    pipe.execute_command("WAIT", self.wait_replicas, wait_ms)
                try:
                    answers = await pipe.execute()
                    self._check_replicas(answers)
                    return
                except redis.exceptions.NoScriptError:
                    if attempt:
                        raise
            await self._load_scripts()  # the server restarted without its script cache

    def _check_replicas(self, answers: list[Any]) -> None:
        """Raise ``NotReplicated`` (an outage: the send is repeated) if ``WAIT`` fell short.

        Repeating is safe: the enqueue script skips ids it already holds.
        """
        if self.wait_replicas and int(answers[-1]) < self.wait_replicas:
            raise NotReplicated(
                f"{answers[-1]} of {self.wait_replicas} replica(s) acknowledged the message"
            )

    # -- consuming ----------------------------------------------------------

    def _start_keeper(self) -> None:
        if self._keeper is not None and self._keeper.is_alive():
            return
        self._keeper = Keeper(
            target=self.target,
            client_options=self._client_options(),
            keys=self._keys,
            tables=self._tables,
            lease_ms=to_ms(self.visibility_timeout),
            heartbeat_interval=self.heartbeat_interval,
            reaper_interval=self.reaper_interval,
            dead_letter_ttl_ms=to_ms(self.dead_letter_ttl),
            where=self._where,
        )
        self._keeper.start(asyncio.get_running_loop())

    async def _consume(
        self, queue: str, prefetch: int, time_limit: float | None
    ) -> AsyncGenerator[Receipt, None]:
        q = self._queue(queue)
        self._start_keeper()
        outage = self._outage(f"consumer of {queue}")
        batch: deque[RedisReceipt] = deque()
        try:
            while True:
                while batch:
                    receipt = batch.popleft()
                    if not receipt.lost:
                        yield receipt
                try:
                    await self._sit_out(q)
                    # Shielded: a fetch cancelled after Redis ran it would
                    # strand its messages until their leases expire.
                    with anyio.CancelScope(shield=True):
                        wait_ms, receipts = await self._fetch(q, prefetch)
                    batch.extend(receipts)
                    if outage.since is not None:
                        outage.recovered()
                        if self._keeper is not None:
                            self._keeper.renew_soon()
                    if not receipts:
                        await self._wait(q, wait_ms)
                except redis.RedisError as exc:
                    if not self._transient(exc):
                        raise BrokerError(
                            f"Redis at {self._where} refused a fetch from {queue}: {exc}"
                        ) from exc
                    await anyio.sleep(outage.failed(exc, kind=outage_kind(exc)))
        finally:
            if batch:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self.socket_timeout):
                    await q.hand_back(list(batch))

    async def _sit_out(self, q: Queue) -> None:
        """Fetch nothing while this consumer runs a group of suspects, so they run apart.

        Bounded by a lease: a suspect still running after it has had its
        lease renewed and need not keep the queue waiting any longer.
        """
        quarantine = q.quarantine
        if quarantine is not None:
            with anyio.move_on_after(self.visibility_timeout):
                await quarantine.settled.wait()
            q.quarantine = None

    async def _fetch(self, q: Queue, prefetch: int) -> tuple[int, list[RedisReceipt]]:
        self._fetches += 1
        token = f"{self._consumer_id}:{self._fetches}"
        wait_ms, items, suspects = await self._script(
            "fetch",
            q.keys,
            [
                min(prefetch, CHUNK),
                token,
                to_ms(self.visibility_timeout),
                self.max_message_size + GROWTH_ALLOWANCE,
                self.max_deliveries,
            ],
        )
        receipts = []
        for i in range(0, len(items), 3):
            rid, body, count = items[i], items[i + 1], items[i + 2]
            if count == 0:
                message_id = rid.decode("utf-8", "replace")
                logger.warning(
                    "dead-lettering message %s from queue %s (%d bytes): too_large",
                    message_id,
                    q.name,
                    body,
                )
                reason = f"too_large: {body} bytes over the limit of {self.max_message_size}"
                await store_refusal(self.results, message_id, reason)
                continue
            receipts.append(RedisReceipt(q, rid, token, body, count))
        if suspects and receipts:
            q.quarantine = Quarantine(receipts)
            logger.warning(
                "running %d message(s) of queue %s apart from other work: each was running "
                "when a worker died (suspects)",
                len(receipts),
                q.name,
            )
        q.leases.add(receipts)
        return int(wait_ms), receipts

    async def _wait(self, q: Queue, wait_ms: int) -> None:
        """Block until the queue is notified, the next delayed message is due, or a while."""
        timeout = self.idle_timeout if wait_ms < 0 else min(self.idle_timeout, wait_ms / 1000)
        if timeout <= 0:
            return
        assert self._blocking is not None
        await self._blocking.blpop([q.notify_key], timeout=max(timeout, 0.001))

    # -- inspection ---------------------------------------------------------

    async def _stats(self, queue: str) -> QueueStats:
        keys = self._keys.queue(queue)
        ready, delayed, in_flight, dead = await self._retrying(
            "stats", lambda: self._script("stats", keys, [to_ms(self.dead_letter_ttl)])
        )
        return QueueStats(ready, delayed, in_flight, dead)

    async def _dead_letters(self, queue: str, limit: int) -> list[DeadRecord]:
        keys = self._keys.queue(queue)
        items = await self._retrying(
            "dead_letters",
            lambda: self._script("dead_letters", keys, [to_ms(self.dead_letter_ttl), limit]),
        )
        return [
            DeadRecord(
                items[i].decode("utf-8", "replace"),
                items[i + 1],
                items[i + 2].decode("utf-8", "replace"),
                float(items[i + 3]) / 1000,
            )
            for i in range(0, len(items), 4)
        ]

    async def _requeue_dead(self, queue: str, ids: list[str] | None) -> int:
        keys = self._keys.queue(queue)
        ttl = to_ms(self.dead_letter_ttl)
        total = 0
        if ids is None:
            while n := await self._retrying(
                "requeue_dead", lambda: self._script("requeue_dead", keys, [ttl, CHUNK])
            ):
                total += n
            return total
        for start in range(0, len(ids), CHUNK):
            chunk = [ttl, CHUNK, *ids[start : start + CHUNK]]
            total += await self._retrying(
                "requeue_dead", functools.partial(self._script, "requeue_dead", keys, chunk)
            )
        return total

    async def _drain(self, what: str, queue: str) -> int:
        keys = self._keys.queue(queue)
        total = 0
        while n := await self._retrying(what, lambda: self._script(what, keys, [CHUNK])):
            total += n
        return total

    async def _purge(self, queue: str) -> int:
        return await self._drain("purge", queue)

    async def _purge_dead(self, queue: str) -> int:
        return await self._drain("purge_dead", queue)

    async def _browse(
        self, queue: str, state: State, limit: int, offset: int
    ) -> list[BrowseRecord]:
        keys, ttl = self._keys.queue(queue), to_ms(self.dead_letter_ttl)
        args = [state, offset, limit, ttl]
        items = await self._retrying("browse", lambda: self._script("browse", keys, args))
        return _inspect.browsed(state, items)

    async def _locate(self, queue: str, message_id: str) -> BrowseRecord | None:
        keys, args = self._keys.queue(queue), [message_id, to_ms(self.dead_letter_ttl)]
        items = await self._retrying("locate", lambda: self._script("locate", keys, args))
        return _inspect.located(message_id, items)

    async def _register_worker(self, worker_id: str, record: bytes, ttl: float) -> None:
        keys, args = self._keys.workers, [worker_id, record, to_ms(ttl)]
        await self._retrying("heartbeat", lambda: self._script("register_worker", keys, args))

    async def _unregister_worker(self, worker_id: str) -> None:
        assert self._client is not None
        client, (ids, records) = self._client, self._keys.workers
        await self._retrying("unregister", lambda: client.zrem(ids, worker_id))
        await self._retrying("unregister", lambda: client.hdel(records, worker_id))

    async def _worker_records(self) -> list[bytes]:
        items = await self._retrying(
            "workers", lambda: self._script("workers", self._keys.workers, [])
        )
        return [bytes(r) for r in items if r is not None]

    async def _known_queues(self) -> list[str]:
        assert self._client is not None
        client = self._client
        names = await self._retrying("known_queues", lambda: client.smembers(self._keys.queues))
        return sorted(_text(n) for n in names)

    # -- unique keys ----------------------------------------------------------

    async def _unique_claim(self, key: str, message_id: str, ttl: float) -> str | None:
        assert self._client is not None
        client, name = self._client, self._keys.unique(key)
        holder = await self._retrying(
            "a unique claim",
            lambda: client.eval(_UNIQUE_CLAIM, 1, name, message_id, max(to_ms(ttl), 1)),
        )
        return None if holder is None else _text(holder)

    async def _unique_release(self, key: str, message_id: str, ttl: float) -> None:
        assert self._client is not None
        client, name = self._client, self._keys.unique(key)
        await self._retrying(
            "a unique release",
            lambda: client.eval(_UNIQUE_RELEASE, 1, name, message_id, to_ms(ttl)),
        )

    # -- cancellation ---------------------------------------------------------

    async def _cancel(self, message_id: str, ttl: float) -> None:
        assert self._client is not None
        client = self._client
        await self._retrying(
            "a cancellation",
            lambda: client.xadd(self._keys.cancels, {"id": message_id}, maxlen=100_000),
        )

    async def _cancellations(self, cursor: str | None) -> tuple[list[str], str | None]:
        assert self._client is not None
        client, low = self._client, "-" if cursor is None else f"({cursor}"
        entries = await self._retrying(
            "reading cancellations", lambda: client.xrange(self._keys.cancels, low, "+")
        )
        if not entries:
            return [], cursor
        ids = [_text((fields or {}).get(b"id") or b"") for _, fields in entries]
        return ids, _text(entries[-1][0] or b"")

    # -- schedules ------------------------------------------------------------

    async def _claim_fire(self, schedule: str, fire_at: float, ttl: float) -> bool:
        assert self._client is not None
        client, ms = self._client, round(fire_at * 1000)
        keys = [self._keys.cron(schedule, ms), self._keys.cron_last(schedule)]
        claimed = await self._retrying(
            "a schedule claim",
            lambda: client.eval(_CLAIM_FIRE, 2, *keys, ms, max(to_ms(ttl) // 1000, 1)),
        )
        return bool(claimed)

    async def _last_fire(self, schedule: str) -> float | None:
        assert self._client is not None
        client = self._client
        last = await self._retrying(
            "a schedule read", lambda: client.get(self._keys.cron_last(schedule))
        )
        return None if last is None else int(last) / 1000

    # -- settling -----------------------------------------------------------

    async def _settle(self, q: Queue, items: Sequence[Item]) -> list[int]:
        """Apply settlements in one script call, repeating it while Redis is unreachable.

        A repeat after a lost reply must not read the batch's own work as
        "not owned" (silently, or as a lease lost that was not): the script
        keeps its answer under a receipt key for longer than the repeats can
        last, and a repeat gets that answer back.
        """
        self._settles += 1
        keys = [*q.keys, self._keys.receipt(q.name, f"{self._consumer_id}:{self._settles}")]
        args = [_scripts.pack(items), to_ms(self.send_timeout) + 60_000]
        return await self._retrying(
            "settling", lambda: self._script("settle", keys, args), q.outage
        )
