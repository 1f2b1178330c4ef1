"""Retry failed messages with exponential backoff; dead-letter them when exhausted."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from taskflow._redact import redact
from taskflow._time import seconds
from taskflow.errors import Cancelled, RateLimitExceeded, Reject, Retry
from taskflow.middleware._shared import backoff, describe
from taskflow.middleware.base import CallNext, Context, Middleware

__all__ = [
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MIN_BACKOFF",
    "Retries",
    "backoff",
    "describe",
]

logger = logging.getLogger("taskflow.middleware.retries")

DEFAULT_MAX_RETRIES = 20
DEFAULT_MIN_BACKOFF = 15.0
DEFAULT_MAX_BACKOFF = 7 * 24 * 3600.0


class Retries(Middleware):
    """Decide the fate of failed messages: retry with backoff, or dead letters.

    Options (per actor, or per message): ``max_retries``, ``min_backoff``,
    ``max_backoff``, ``retry_when(retries, exc) -> bool`` (replaces
    ``max_retries`` when given) and ``throws`` (exception types that never
    retry). An actor may raise :class:`taskflow.Retry` to be retried without
    an error log, or :class:`taskflow.Reject` to go straight to dead letters.

    It marks the outcome (``ctx.retry`` or ``ctx.dead_letter``) and raises
    the exception again so that outer middleware (results, callbacks) see it;
    ``ctx.outcome`` tells them whether it will run again. The worker settles.
    """

    actor_options = frozenset({"max_retries", "min_backoff", "max_backoff", "retry_when", "throws"})

    def __init__(
        self,
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        min_backoff: float = DEFAULT_MIN_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
    ) -> None:
        self.max_retries = max_retries
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Run the rest of the stack; on failure retry or dead-letter the message."""
        try:
            return await call_next(ctx)
        except RateLimitExceeded:
            raise  # a deferral, not a failure: the rate-limit layer puts it back
        except Cancelled as exc:
            ctx.error = exc
            ctx.dead_letter("cancelled")  # asked for: never retried, no error logged
            raise
        except Exception as exc:
            ctx.error = exc
            self._decide(ctx, exc)
            raise

    def _should_retry(self, ctx: Context, exc: Exception) -> bool:
        if isinstance(exc, Reject):
            return False
        throws = ctx.option("throws")
        if throws and isinstance(exc, throws):
            return False
        retries = ctx.message.retries
        retry_when: Callable[[int, Exception], bool] | None = ctx.option("retry_when")
        if retry_when is not None:
            return bool(retry_when(retries, exc))
        max_retries: int = ctx.option("max_retries", self.max_retries)
        return retries < max_retries

    def _decide(self, ctx: Context, exc: Exception) -> None:
        m = ctx.message
        if not self._should_retry(ctx, exc):
            if isinstance(exc, Reject):
                reason = f"rejected: {redact(str(exc))}"
            elif ctx.option("throws") and isinstance(exc, ctx.option("throws")):
                reason = f"failed: {describe(exc)}"
            else:
                reason = f"max_retries_exceeded: {describe(exc)} after {m.retries + 1} attempts"
            logger.error(
                "message %s for %s on %s failed for good: %s",
                m.id,
                m.actor,
                m.queue,
                reason,
                exc_info=not isinstance(exc, Reject),
            )
            ctx.dead_letter(reason)
            return
        if isinstance(exc, Retry) and exc.delay is not None:
            delay = seconds(exc.delay)
        else:
            delay = backoff(
                m.retries,
                seconds(ctx.option("min_backoff", self.min_backoff)),
                seconds(ctx.option("max_backoff", self.max_backoff)),
            )
        logger.warning(
            "message %s for %s on %s failed (%s); retry %d in %.2f s",
            m.id,
            m.actor,
            m.queue,
            describe(exc),
            m.retries + 1,
            delay,
            # The first failure carries the traceback; repeats of it stay one line.
            exc_info=m.retries == 0 and not isinstance(exc, Retry),
        )
        ctx.retry(delay)
