"""Dead-letter messages that waited longer than their ``max_age``."""

from __future__ import annotations

import logging
from typing import Any

from taskflow._time import seconds, utcnow
from taskflow.middleware.base import CallNext, Context, Middleware

logger = logging.getLogger("taskflow.middleware.age_limit")


class AgeLimit(Middleware):
    """Skip messages older than ``max_age`` seconds (counted from ``eta`` when delayed).

    Args:
        max_age: Default for actors that set none; ``None`` means no limit.
    """

    actor_options = frozenset({"max_age"})

    def __init__(self, *, max_age: float | None = None) -> None:
        self.max_age = max_age

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Dead-letter the message instead of running it when it is too old."""
        max_age = ctx.option("max_age", self.max_age)
        if max_age is not None:
            start = ctx.message.eta or ctx.message.enqueued_at
            age = (utcnow() - start).total_seconds()
            if age > seconds(max_age):
                logger.warning(
                    "message %s for %s on %s is %.1f s old, over max_age; dead-lettering",
                    ctx.message.id,
                    ctx.actor.name,
                    ctx.message.queue,
                    age,
                )
                ctx.dead_letter(f"max_age_exceeded: {age:.1f} s old")
                return None
        return await call_next(ctx)
