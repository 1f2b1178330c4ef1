"""Stop actors that run past their ``time_limit``."""

from __future__ import annotations

import asyncio
from typing import Any

from taskflow.broker import seconds
from taskflow.errors import TimeLimitExceeded
from taskflow.middleware.base import CallNext, Context, Middleware

DEFAULT_TIME_LIMIT = 600.0


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

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Run the rest of the stack under the time limit."""
        limit = ctx.option("time_limit", self.time_limit)
        if limit is None:
            return await call_next(ctx)
        limit = seconds(limit)
        if not ctx.actor.is_async:
            return await self._limit_thread(ctx, call_next, limit)
        try:
            # asyncio.timeout is far cheaper per message than a full cancel scope,
            # and cancellation from outside still passes through it untouched.
            async with asyncio.timeout(limit):
                return await call_next(ctx)
        except TimeoutError as exc:
            raise TimeLimitExceeded(
                f"{ctx.actor.name} ran over its time limit of {limit} s"
            ) from exc

    async def _limit_thread(self, ctx: Context, call_next: CallNext, limit: float) -> Any:
        def expire() -> None:
            if ctx.interrupt is not None:
                ctx.interrupt(TimeLimitExceeded)

        handle = asyncio.get_running_loop().call_later(limit, expire)
        try:
            return await call_next(ctx)
        finally:
            handle.cancel()
