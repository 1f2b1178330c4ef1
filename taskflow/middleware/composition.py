"""The composition layer: goes on with a pipeline or group when a message finishes.

The engine (nodes, tails, the runner and the design notes on how group
completion survives crashes) is :mod:`taskflow._flow`; this layer only reads
a message's tail and hands the outcome to a :class:`taskflow._flow.Runner`.
"""

from __future__ import annotations

import logging
from typing import Any

from taskflow._flow import INTERNAL_OPTIONS, Runner, Tail
from taskflow.middleware._shared import follow_up_failed, result_ttl
from taskflow.middleware.base import CallNext, Context, Middleware, Outcome
from taskflow.results import failure_record

logger = logging.getLogger("taskflow.middleware.composition")


class Composition(Middleware):
    """Send the next pipeline step and complete groups when a message finishes.

    Options: ``pipe_ignore`` (bool), on a pipeline step that should not
    receive the previous step's result. ``pipe_target`` and ``group_ref``
    are written by :func:`taskflow.pipeline` and :func:`taskflow.group` and
    reserved: an actor or message that sets them is refused.
    """

    actor_options = frozenset({"pipe_ignore"})
    internal_options = INTERNAL_OPTIONS

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Run the rest of the stack, then go on with what follows the message."""
        options = ctx.message.options
        if "pipe_target" not in options and "group_ref" not in options:
            return await call_next(ctx)
        tail = Tail.of_options(options)
        rerun = ctx.delivery.redelivered or ctx.message.retries > 0
        try:
            value = await call_next(ctx)
        except Exception as exc:
            if ctx.outcome is Outcome.DEAD:
                runner = Runner(ctx.broker, rerun=rerun, ttl=result_ttl(ctx))
                await self._failed(ctx, runner, tail, exc)
            raise
        if not ctx.decided:
            runner = Runner(ctx.broker, rerun=rerun, ttl=result_ttl(ctx))
            try:
                await runner.succeed(tail, value, ctx.message.id)
                await runner.flush()
            except Exception as exc:
                follow_up_failed(ctx, exc, "the next step of its pipeline or group")
                raise
        return value

    async def _failed(self, ctx: Context, runner: Runner, tail: Tail, exc: Exception) -> None:
        try:
            if runner.rerun and await runner.backend.succeeded(ctx.message.id):
                return  # an earlier run succeeded and went on: that success stands
            await runner.fail(tail, failure_record(exc))
        except Exception:
            logger.exception(
                "message %s failed; could not mark the rest of its pipeline or group failed",
                ctx.message.id,
            )
