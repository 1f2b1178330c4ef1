"""Stop actors that run past their ``time_limit``."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from taskflow.broker import seconds
from taskflow.errors import TimeLimitExceeded
from taskflow.middleware.base import CallNext, Context, Middleware

DEFAULT_TIME_LIMIT = 600.0


class _Deadline:
    __slots__ = ("at", "expired", "task", "uncancelled")

    def __init__(self, task: asyncio.Task[Any], at: float) -> None:
        self.task = task
        self.at = at
        self.expired = False
        self.uncancelled = False


class _Deadlines:
    """The deadlines of the running async actors, behind one loop timer.

    ``asyncio.timeout()`` arms and disarms a timer of the loop for every
    message, a measurable share of a worker's CPU at thousands of short
    messages per second. Here a message only joins a set; one timer, armed
    for the earliest deadline, cancels the tasks whose deadline passed, and
    is re-armed for the earliest one left. Actors that finish in time never
    touch the timer unless their deadline is the earliest.
    """

    def __init__(self) -> None:
        self._running: set[_Deadline] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def add(self, limit: float) -> _Deadline:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        if loop is not self._loop:  # a new event loop: nothing of the old one is valid
            self._running.clear()
            self._loop, self._timer, self._timer_at = loop, None, math.inf
        deadline = _Deadline(task, loop.time() + limit)
        self._running.add(deadline)
        if deadline.at < self._timer_at:
            self._arm(loop, deadline.at)
        return deadline

    def discard(self, deadline: _Deadline) -> None:
        self._running.discard(deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(at, self._expire, loop), at

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._timer_at = None, math.inf
        now = loop.time()
        earliest = math.inf
        for deadline in self._running:
            if deadline.at <= now:
                if not deadline.expired:
                    deadline.expired = True
                    deadline.task.cancel()
            elif deadline.at < earliest:
                earliest = deadline.at
        if earliest < math.inf:
            self._arm(loop, earliest)


class TimeLimit(Middleware):
    """Fail actors that run longer than ``time_limit`` seconds with ``TimeLimitExceeded``.

    Async actors are cancelled at the limit. Sync actors cannot be cancelled,
    so ``TimeLimitExceeded`` is raised asynchronously inside their thread; it
    takes effect at the thread's next Python instruction (a call blocked in C
    finishes first). Either way it counts as a failure and is retried.

    Args:
        time_limit: Default for actors that set none; ``None`` means no limit.
    """

    actor_options = frozenset({"time_limit"})

    def __init__(self, *, time_limit: float | None = DEFAULT_TIME_LIMIT) -> None:
        self.time_limit = time_limit
        self._deadlines = _Deadlines()

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Run the rest of the stack under the time limit."""
        limit = ctx.option("time_limit", self.time_limit)
        if limit is None:
            return await call_next(ctx)
        limit = seconds(limit)
        if not ctx.actor.is_async:
            return await self._limit_thread(ctx, call_next, limit)
        # Cancelled at the deadline, told apart from a cancellation from outside
        # (shutdown) the way asyncio.timeout() does it, by the task's cancel count.
        deadline = self._deadlines.add(limit)
        task = deadline.task
        cancelling = task.cancelling()
        try:
            return await call_next(ctx)
        except asyncio.CancelledError as exc:
            if deadline.expired:
                deadline.uncancelled = True
                if task.uncancel() <= cancelling:
                    raise TimeLimitExceeded(
                        f"{ctx.actor.name} ran over its time limit of {limit} s"
                    ) from exc
            raise
        finally:
            self._deadlines.discard(deadline)
            if deadline.expired and not deadline.uncancelled:
                task.uncancel()  # the actor swallowed the cancellation

    async def _limit_thread(self, ctx: Context, call_next: CallNext, limit: float) -> Any:
        def expire() -> None:
            if ctx.interrupt is not None:
                ctx.interrupt(TimeLimitExceeded)

        handle = asyncio.get_running_loop().call_later(limit, expire)
        try:
            return await call_next(ctx)
        finally:
            handle.cancel()
