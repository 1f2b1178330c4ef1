"""Helpers that several middleware share, so that no middleware imports another."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from taskflow._redact import redact
from taskflow._time import seconds
from taskflow.errors import BrokerUnavailable
from taskflow.results import DEFAULT_RESULT_TTL

if TYPE_CHECKING:
    from taskflow.middleware.base import Context

logger = logging.getLogger("taskflow.middleware")

__all__ = [
    "DEFAULT_RESULT_TTL",
    "RESULT_TTL_KEY",
    "backoff",
    "describe",
    "follow_up_failed",
    "result_ttl",
]

#: Where the results layer leaves the TTL it used in ``ctx.state``.
RESULT_TTL_KEY = "taskflow.result_ttl"

_REASON_LIMIT = 500


def describe(exc: BaseException) -> str:
    """Return ``Type: message``, capped and with secrets masked, for dead-letter reasons and logs."""
    text = f"{type(exc).__name__}: {redact(str(exc))}"
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


def backoff(retries: int, min_backoff: float, max_backoff: float) -> float:
    """Exponential backoff for the ``retries``-th retry, with jitter, in seconds."""
    ceiling = min(max_backoff, min_backoff * 2 ** min(retries, 64))
    return random.uniform(min(min_backoff, ceiling), ceiling)


def result_ttl(ctx: Context) -> float:
    """The TTL, in seconds, of the results stored for ``ctx``'s message."""
    ttl = ctx.state.get(RESULT_TTL_KEY)
    if ttl is not None:
        return float(ttl)
    return seconds(ctx.option("result_ttl", DEFAULT_RESULT_TTL))


def follow_up_failed(ctx: Context, exc: Exception, what: str) -> None:
    """Mark the outcome of a message that succeeded but whose follow-up (``what``) failed.

    A server that could not be reached (:class:`taskflow.BrokerUnavailable`)
    retries the message after a backoff, so the follow-up is not lost; any
    other error (a value that cannot be encoded, a message too large) would
    fail again, so the message goes to dead letters with the reason.
    """
    if ctx.decided:
        logger.error("message %s: could not send %s (%s)", ctx.message.id, what, describe(exc))
        return
    if isinstance(exc, BrokerUnavailable):
        delay = backoff(ctx.message.retries, 1.0, 60.0)
        logger.warning(
            "message %s for %s: could not send %s (%s); running it again in %.1f s",
            ctx.message.id,
            ctx.actor.name,
            what,
            describe(exc),
            delay,
        )
        ctx.retry(delay)
        return
    logger.error(
        "message %s for %s: could not send %s; dead-lettering it",
        ctx.message.id,
        ctx.actor.name,
        what,
        exc_info=exc,
    )
    ctx.dead_letter(f"failed: could not send {what}: {describe(exc)}")
