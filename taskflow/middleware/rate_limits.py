"""Defer messages that meet a full rate limiter, instead of failing them.

Options (per actor): ``rate_limit`` (a limiter from
:mod:`taskflow.rate_limits`, or a callable taking the message and returning
one, for per-key limits such as one per tenant) and ``max_concurrency`` (an
int: most messages of this actor running at once across every worker, kept
on the broker's own server, or on this middleware's ``backend``).

The limiters are taken before the rest of the stack runs and given back
after it, whatever the outcome: success, failure, cancellation or a time
limit. A message that finds a limiter full, or whose actor raises
:class:`taskflow.RateLimitExceeded`, is deferred: it goes back to its queue
with a short jittered delay, keeps its retry count and does not count as a
delivery towards ``max_deliveries``. Nothing waits in a worker slot.

The delay (see :class:`_Pacer`) is at least ``min_delay`` (0.1 s) and at
most ``max_delay`` (5 s): deferred messages of one key are spread out by
how fast room comes free, and the delay grows while the key stays full.

This layer sits outside results, callbacks and retries and marks the
deferral on the context (``ctx.defer``); the worker's settler puts the
message back. Retries lets ``RateLimitExceeded`` through unmarked, so the
deferral is the message's only outcome.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from taskflow.errors import RateLimitExceeded
from taskflow.middleware.base import CallNext, Context, Middleware
from taskflow.rate_limits import (
    BucketRateLimiter,
    ConcurrentRateLimiter,
    RateLimiter,
    WindowRateLimiter,
)
from taskflow.rate_limits.backends import RateLimitBackend, for_broker

if TYPE_CHECKING:
    from taskflow.broker import Broker
    from taskflow.worker import Worker

logger = logging.getLogger("taskflow.middleware.rate_limits")

DEFAULT_MIN_DELAY = 0.1
DEFAULT_MAX_DELAY = 5.0
_MAX_KEYS = 10_000
_OVERSUBSCRIBE = 1.5
_HOLDS = 32


class _Pacer:
    """Chooses deferral delays per limiter key, in this process.

    Two things set the delay. The message's place in the key's line (kept by
    the backend, across all workers): it comes back about when the messages
    ahead of it have had their turn, each turn being the time one unit of
    room takes to come free (how long this process's holders hold, divided
    by the limit and by 1.5, so that more come back than fit and room
    never waits; a window or bucket divided by its limit). And a floor that
    grows while the key stays full: half the time since this process last
    saw room on it. Both are kept between ``min_delay`` and ``max_delay``
    and jittered by ±20 %.
    """

    def __init__(self, min_delay: float, max_delay: float) -> None:
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._room: dict[str, float] = {}
        self._hold: dict[str, float] = {}
        self._recent: dict[str, deque[float]] = {}

    def room(self, key: str) -> None:
        """The key had room just now."""
        self._room[key] = time.monotonic()

    def held(self, key: str, seconds: float) -> None:
        """A holder of ``key`` held it ``seconds``; the median of the last ones is kept.

        A median, not a mean: one hold stretched by a stalled loop must not
        send a whole line of messages away for seconds.
        """
        self.room(key)
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = deque(maxlen=_HOLDS)
        recent.append(seconds)
        if len(recent) == 1 or len(recent) % 8 == 0:
            self._hold[key] = statistics.median(recent)

    def _turn(self, key: str, limiter: RateLimiter | None) -> float:
        """Seconds one unit of room takes to come free, as far as this process knows."""
        if isinstance(limiter, ConcurrentRateLimiter):
            # Until a hold was measured, no line: all come back after min_delay,
            # by when one has (a guess here would space a whole backlog wrongly).
            return self._hold.get(key, 0.0) / limiter.limit / _OVERSUBSCRIBE
        if isinstance(limiter, WindowRateLimiter):
            return limiter.window / limiter.limit
        if isinstance(limiter, BucketRateLimiter):
            return limiter.bucket / limiter.limit
        return 0.0

    def full(self, exc: RateLimitExceeded) -> float:
        """The delay for a message that met ``exc.key`` full."""
        if len(self._room) > _MAX_KEYS:
            self._room.clear()
            self._hold.clear()
            self._recent.clear()
        key, now = exc.key, time.monotonic()
        line = (exc.retry_after or 0.0) + exc.ahead * self._turn(key, exc.limiter)
        floor = 0.5 * (now - self._room.setdefault(key, now))
        delay = min(max(line, floor, self.min_delay), self.max_delay)
        return min(delay * random.uniform(0.8, 1.2), self.max_delay)


class RateLimits(Middleware):
    """Take an actor's limiters around its run; defer its message when one is full.

    Args:
        backend: Where ``max_concurrency`` counts are kept; default: the
            broker's own server (Redis, the SQLite file, memory). A
            ``RabbitMQBroker`` has none, so ``max_concurrency`` needs one here.
        min_delay: Seconds of the first deferral of a full key (jittered).
        max_delay: Longest deferral, in seconds.
    """

    actor_options = frozenset({"rate_limit", "max_concurrency"})

    def __init__(
        self,
        backend: RateLimitBackend | None = None,
        *,
        min_delay: float = DEFAULT_MIN_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
    ) -> None:
        if not 0 < min_delay <= max_delay:
            raise ValueError("need 0 < min_delay <= max_delay")
        self.backend = backend
        self._pacer = _Pacer(min_delay, max_delay)
        self._caps: dict[str, ConcurrentRateLimiter] = {}
        self._broker_backend: RateLimitBackend | None = None

    # -- declaration ----------------------------------------------------------

    def validate(self, broker: Broker, actor: str, options: Mapping[str, Any]) -> None:
        """Check ``rate_limit`` and ``max_concurrency`` when an actor is declared.

        Raises:
            TypeError: A value of the wrong kind, or ``max_concurrency`` on a
                broker with no store of its own and no ``backend`` here.
            ValueError: ``max_concurrency`` below 1.
        """
        limiter = options.get("rate_limit")
        if limiter is not None and not (isinstance(limiter, RateLimiter) or callable(limiter)):
            raise TypeError(
                f"actor {actor!r}: rate_limit must be a limiter from taskflow.rate_limits "
                f"or a callable(message) returning one, not {limiter!r}"
            )
        cap = options.get("max_concurrency")
        if cap is None:
            return
        if not isinstance(cap, int) or isinstance(cap, bool):
            raise TypeError(f"actor {actor!r}: max_concurrency must be an int, not {cap!r}")
        if cap < 1:
            raise ValueError(f"actor {actor!r}: max_concurrency must be at least 1, not {cap}")
        if self._backend_for(broker) is None:
            raise TypeError(
                f"actor {actor!r}: max_concurrency needs a rate-limit backend, and "
                f"{type(broker).__name__} has no store of its own: use "
                "rate_limit=ConcurrentRateLimiter(RedisBackend(url) or SQLiteBackend(path), "
                "key, limit=N), or build the broker with "
                "middleware=default_middleware(rate_limits=RedisBackend(url))"
            )

    def _backend_for(self, broker: Broker) -> RateLimitBackend | None:
        if self.backend is not None:
            return self.backend
        if self._broker_backend is None:
            self._broker_backend = for_broker(broker)
        return self._broker_backend

    async def on_shutdown(self, worker: Worker) -> None:
        """Close the backend's connections (a later use opens them again)."""
        for backend in {id(b): b for b in (self.backend, self._broker_backend) if b}.values():
            await backend.close()

    # -- processing -----------------------------------------------------------

    def _limiters(self, ctx: Context) -> list[RateLimiter]:
        limiters: list[RateLimiter] = []
        option = ctx.actor.options.get("rate_limit")
        if option is not None:
            limiter = option if isinstance(option, RateLimiter) else option(ctx.message)
            if not isinstance(limiter, RateLimiter):
                raise TypeError(f"rate_limit of {ctx.actor.name!r} returned {limiter!r}")
            limiters.append(limiter)
        cap = ctx.actor.options.get("max_concurrency")
        if cap is not None:
            limiters.append(self._cap(ctx, cap))
        return limiters

    def _cap(self, ctx: Context, cap: int) -> ConcurrentRateLimiter:
        limiter = self._caps.get(ctx.actor.name)
        if limiter is None:
            backend = self._backend_for(ctx.broker)
            assert backend is not None  # checked when the actor was declared
            time_limit = ctx.actor.options.get("time_limit")
            # A holder that dies frees its slot after this; longer than any run.
            ttl = 1.5 * float(time_limit) + 30 if time_limit else 3600.0
            limiter = ConcurrentRateLimiter(
                backend, f"max_concurrency:{ctx.actor.name}", cap, ttl=ttl
            )
            self._caps[ctx.actor.name] = limiter
        return limiter

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Take the limiters, run the rest of the stack, give them back; defer when full."""
        limiters = self._limiters(ctx)
        if not limiters:
            try:
                return await call_next(ctx)
            except RateLimitExceeded as exc:
                self._defer(ctx, exc)
                return None
        held: list[tuple[RateLimiter, str]] = []
        since = time.monotonic()
        try:
            full = await self._take_all(ctx, limiters, held)
            if full is not None:
                self._defer(ctx, full)
                return None
            return await call_next(ctx)
        except RateLimitExceeded as exc:
            self._defer(ctx, exc)
            return None
        finally:
            with anyio.CancelScope(shield=True):
                for limiter, holder in reversed(held):
                    await self._release(limiter, holder)
                    self._pacer.held(limiter.key, time.monotonic() - since)

    async def _take_all(
        self, ctx: Context, limiters: list[RateLimiter], held: list[tuple[RateLimiter, str]]
    ) -> RateLimitExceeded | None:
        """Take each limiter into ``held``; the first that is full stops it and is returned."""
        for limiter in limiters:
            try:
                holder = await limiter.acquire_nowait(waiter=ctx.message.id)
            except RateLimitExceeded as exc:
                return exc
            self._pacer.room(limiter.key)
            held.append((limiter, holder))
        return None

    async def _release(self, limiter: RateLimiter, holder: str) -> None:
        try:
            await limiter.release(holder)
        except Exception:
            # The slot comes back by itself after the limiter's ttl.
            logger.exception("could not release rate limit %r", limiter.key)

    def _defer(self, ctx: Context, exc: RateLimitExceeded) -> None:
        delay = self._pacer.full(exc)
        m = ctx.message
        logger.debug(
            "message %s for %s on %s deferred %.2f s: rate limit %r is full",
            m.id,
            m.actor,
            m.queue,
            delay,
            exc.key,
        )
        ctx.state["deferred"] = delay
        ctx.defer(delay)
