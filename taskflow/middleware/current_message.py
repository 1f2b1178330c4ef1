"""The message being processed, readable from anywhere in the actor's task or thread."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from taskflow.middleware.base import CallNext, Context, Middleware

if TYPE_CHECKING:
    from taskflow.broker import Delivery
    from taskflow.message import Message

_current: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar(
    "taskflow_current_delivery", default=None
)


def current_message() -> Message[Any] | None:
    """Return the message being processed in this task or thread, if any."""
    delivery = _current.get()
    return None if delivery is None else delivery.message


def current_delivery() -> Delivery | None:
    """Return the delivery being processed (with ``delivery_count`` and ``redelivered``)."""
    return _current.get()


class CurrentMessage(Middleware):
    """Makes :func:`current_message` work inside actors, sync ones included."""

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Set the context variable around the rest of the stack."""
        token = _current.set(ctx.delivery)
        try:
            return await call_next(ctx)
        finally:
            _current.reset(token)
