"""Stop actors that run past their ``time_limit``."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from taskflow._threads import STUCK_GRACE, THREAD_LIMITS
from taskflow._time import seconds
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
    so ``TimeLimitExceeded`` is raised asynchronously inside their thread; its
    clock starts when the thread starts the call (not while the message waits
    for a thread) and it takes effect at the thread's next Python instruction.
    A call blocked in C code that is still running ``stuck_grace`` seconds
    after its limit is given up: the message fails with ``TimeLimitExceeded``
    and the thread is abandoned (see :mod:`taskflow._threads`; ``taskflow
    worker`` then replaces the process). Either way it counts as a failure
    and is retried.

    Args:
        time_limit: Default for actors that set none; ``None`` means no limit.
        stuck_grace: Seconds past the limit after which a sync call is given up.
    """

    actor_options = frozenset({"time_limit"})

    def __init__(
        self, *, time_limit: float | None = DEFAULT_TIME_LIMIT, stuck_grace: float = STUCK_GRACE
    ) -> None:
        self.time_limit = time_limit
        self.stuck_grace = stuck_grace
        self._deadlines = _Deadlines()

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Run the rest of the stack under the time limit."""
        limit = ctx.option("time_limit", self.time_limit)
        if limit is None:
            return await call_next(ctx)
        limit = seconds(limit)
        if not ctx.actor.is_async:
            # The worker arms the limit when a thread starts the call.
            ctx.state[THREAD_LIMITS] = (limit, self.stuck_grace)
            return await call_next(ctx)
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
