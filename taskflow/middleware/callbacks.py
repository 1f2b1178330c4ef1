"""Run a callback actor when a message succeeds or fails for good.

Options, per actor or per message: ``on_success`` and ``on_failure``, each an
actor or an actor's name (declared on the same broker). The callbacks are
sent as messages, so they run on a worker like any actor:

* ``on_success`` is called as ``callback(message_id, result)``: the id of the
  message that succeeded and the value its actor returned;
* ``on_failure`` is called as ``callback(message_id, error)`` once the
  message failed for good (not on a failure that will be retried), where
  ``error`` is a dict ``{"type": ..., "message": ..., "traceback": ...}``
  describing the exception as text.

A message option set to ``None`` turns off the actor's callback for that
message. A callback is sent before the message is acked, so a worker dying
in between sends it again when the message is redelivered.

For example::

    @broker.actor
    def log_failure(message_id: str, error: dict[str, str]) -> None:
        logger.error("%s failed: %s: %s", message_id, error["type"], error["message"])

    @broker.actor(on_failure=log_failure)
    async def charge(order_id: int) -> None: ...

    await charge.send_with_options(args=(42,), on_success="notify_paid")
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from taskflow.actor import Actor
from taskflow.message import Message
from taskflow.middleware._shared import follow_up_failed
from taskflow.middleware.base import CallNext, Context, Middleware, Outcome
from taskflow.results import failure_record

if TYPE_CHECKING:
    from taskflow.broker import Broker

logger = logging.getLogger("taskflow.middleware.callbacks")

_OPTIONS = ("on_success", "on_failure")


def callback_name(value: Any) -> str:
    """Return the actor name a callback option refers to.

    Raises:
        TypeError: ``value`` is neither an actor nor a name.
    """
    if isinstance(value, Actor):
        return value.name
    if isinstance(value, str):
        return value
    raise TypeError(f"a callback must be an actor or an actor's name, not {value!r}")


class Callbacks(Middleware):
    """Send the ``on_success`` / ``on_failure`` callback actors of a message."""

    actor_options = frozenset(_OPTIONS)

    async def before_enqueue(self, broker: Broker, message: Message[Any]) -> Message[Any]:
        """Replace actor objects in the callback options by their names, for the wire.

        Raises:
            TypeError: A callback option is neither an actor nor a name.
        """
        options = message.options
        if all(isinstance(options.get(name), str | None) for name in _OPTIONS):
            return message
        named = {
            k: callback_name(v) if k in _OPTIONS and v is not None else v
            for k, v in options.items()
        }
        return msgspec.structs.replace(message, options=named)

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Run the rest of the stack, then send the callback that fits the outcome."""
        on_success = ctx.option("on_success")
        on_failure = ctx.option("on_failure")
        if on_success is None and on_failure is None:
            return await call_next(ctx)
        try:
            value = await call_next(ctx)
        except Exception as exc:
            if on_failure is not None and ctx.outcome is Outcome.DEAD:
                await self._send_failure(ctx, on_failure, exc)
            raise
        if on_success is not None and not ctx.decided:
            try:
                await self._send(ctx, on_success, value)
            except Exception as exc:
                follow_up_failed(ctx, exc, "its on_success callback")
                raise
        return value

    async def _send_failure(self, ctx: Context, callback: Any, exc: Exception) -> None:
        record = failure_record(exc)
        error = {"type": record.error_type, "message": record.error, "traceback": record.traceback}
        try:
            await self._send(ctx, callback, error)
        except Exception:
            # The message is already dead-lettered; the callback is all that is lost.
            logger.exception("could not send on_failure callback of message %s", ctx.message.id)

    async def _send(self, ctx: Context, callback: Any, payload: Any) -> None:
        name = callback_name(callback)
        actor = ctx.broker.get_actor(name)
        if actor is None:
            logger.error(
                "callback actor %r of message %s is not declared on this broker; not sent",
                name,
                ctx.message.id,
            )
            return
        await actor.send_with_options(args=(ctx.message.id, payload))
