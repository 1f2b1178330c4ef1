"""Store the final outcome of ``store_results=True`` actors in a result backend."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from taskflow._time import seconds
from taskflow.errors import BrokerUnavailable, RateLimitExceeded
from taskflow.middleware._shared import DEFAULT_RESULT_TTL, RESULT_TTL_KEY, follow_up_failed
from taskflow.middleware.base import CallNext, Context, Middleware
from taskflow.results import ResultRecord, failure_record

if TYPE_CHECKING:
    from taskflow.results import ResultBackend

logger = logging.getLogger("taskflow.middleware.results")

__all__ = ["DEFAULT_RESULT_TTL", "Results"]


class Results(Middleware):
    """Write an actor's return value, or its final failure, to ``backend``.

    Nothing is written for a failure that will run again: only once the
    outcome is final (``ctx.outcome``, marked by :class:`Retries`, which runs
    inside this layer), and nothing for a message another layer marked
    instead of letting it be acked (deferred, say). Options: ``store_results`` (bool) and
    ``result_ttl`` (seconds, default one hour).

    If the backend cannot be reached to store the value of a message that
    succeeded, the message is retried after a backoff instead of being
    dead-lettered. A value that cannot be encoded is stored as a failure.
    A message that runs again (its ack was lost) and fails never overwrites
    the success an earlier run stored.
    """

    actor_options = frozenset({"store_results", "result_ttl"})

    def __init__(self, backend: ResultBackend, *, result_ttl: float = DEFAULT_RESULT_TTL) -> None:
        self.backend = backend
        self.result_ttl = result_ttl

    def ttl(self, ctx: Context) -> float:
        """The TTL, in seconds, of the result of ``ctx``'s message."""
        return seconds(ctx.option("result_ttl", self.result_ttl))

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Run the rest of the stack and record the final outcome."""
        if not ctx.option("store_results", False):
            return await call_next(ctx)
        ctx.state[RESULT_TTL_KEY] = self.ttl(ctx)
        try:
            value = await call_next(ctx)
        except Exception as exc:
            if not ctx.runs_again and not isinstance(exc, RateLimitExceeded):
                await self._store_failure(ctx, exc)
            raise
        if not ctx.decided:
            try:
                await self.backend.store(
                    ctx.message.id, ResultRecord(ok=True, value=value), self.ttl(ctx)
                )
            except Exception as exc:
                if not isinstance(exc, BrokerUnavailable):
                    # A value the codec cannot encode: say so to whoever waits.
                    await self._store_failure(ctx, exc)
                follow_up_failed(ctx, exc, "its result")
                raise
        return value

    async def _store_failure(self, ctx: Context, exc: Exception) -> None:
        try:
            rerun = ctx.delivery.redelivered or ctx.message.retries > 0
            if rerun and await self.backend.succeeded(ctx.message.id):
                # An earlier run succeeded (its ack was lost): the first success stands.
                logger.warning(
                    "message %s failed when run again; keeping the result it stored before",
                    ctx.message.id,
                )
                return
            await self.backend.store(ctx.message.id, failure_record(exc), self.ttl(ctx))
        except Exception:
            logger.exception("could not store the failure of message %s", ctx.message.id)
