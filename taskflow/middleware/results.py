"""Store the final outcome of ``store_results=True`` actors in a result backend."""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from taskflow.broker import seconds
from taskflow.middleware.base import CallNext, Context, Middleware
from taskflow.results import ResultRecord

if TYPE_CHECKING:
    from taskflow.results import ResultBackend

DEFAULT_RESULT_TTL = 3600.0
_TRACEBACK_LIMIT = 8000


class Results(Middleware):
    """Write an actor's return value, or its final failure, to ``backend``.

    Nothing is written for a failure that will be retried: only once the
    outcome is final.
    """

    actor_options = frozenset({"store_results", "result_ttl"})

    def __init__(self, backend: ResultBackend, *, result_ttl: float = DEFAULT_RESULT_TTL) -> None:
        self.backend = backend
        self.result_ttl = result_ttl

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Run the rest of the stack and record the final outcome."""
        if not ctx.option("store_results", False):
            return await call_next(ctx)
        ttl = seconds(ctx.option("result_ttl", self.result_ttl))
        try:
            value = await call_next(ctx)
        except Exception as exc:
            if ctx.outcome != "retry":
                text = "".join(traceback.format_exception(exc))[-_TRACEBACK_LIMIT:]
                record = ResultRecord(
                    ok=False, error_type=type(exc).__name__, error=str(exc), traceback=text
                )
                await self.backend.store(ctx.message.id, record, ttl)
            raise
        if ctx.outcome != "dead":
            await self.backend.store(ctx.message.id, ResultRecord(ok=True, value=value), ttl)
        return value
