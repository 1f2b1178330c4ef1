"""The middleware contract: async, around-style, built into a stack once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from taskflow.actor import Actor
    from taskflow.broker import Broker, Delivery
    from taskflow.message import Message
    from taskflow.worker import Worker

logger = logging.getLogger("taskflow.middleware")

Outcome = Literal["pending", "ok", "retry", "dead", "requeue"]


class Context:
    """What one middleware layer knows about the message being processed.

    Attributes:
        broker: The broker.
        worker: The worker processing the message.
        delivery: The delivery, to settle it.
        message: The message.
        actor: The actor it runs.
        args: Positional arguments, converted to the actor's annotations.
        kwargs: Keyword arguments, converted likewise.
        outcome: ``"pending"`` until settled, then ``"ok"``, ``"retry"``,
            ``"dead"`` or ``"requeue"``.
        error: The exception the actor raised, if it failed.
        result: What the actor returned, once it succeeded.
        interrupt: Raises an exception inside a sync actor's thread (set while one runs).
        state: Free room for middleware to share per-message data.
    """

    __slots__ = (
        "actor",
        "args",
        "broker",
        "delivery",
        "error",
        "interrupt",
        "kwargs",
        "message",
        "outcome",
        "result",
        "state",
        "worker",
    )

    def __init__(
        self,
        worker: Worker,
        delivery: Delivery,
        actor: Actor[Any, Any],
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> None:
        self.worker = worker
        self.broker: Broker = worker.broker
        self.delivery = delivery
        self.message: Message[Any] = delivery.message
        self.actor = actor
        self.args = args
        self.kwargs = kwargs
        self.outcome: Outcome = "pending"
        self.error: BaseException | None = None
        self.result: Any = None
        self.interrupt: Callable[[type[BaseException]], None] | None = None
        self.state: dict[str, Any] = {}

    def option(self, name: str, default: Any = None) -> Any:
        """Return option ``name``: the message's override, else the actor's, else ``default``."""
        options = self.message.options
        if name in options:
            return options[name]
        return self.actor.options.get(name, default)


CallNext = Callable[[Context], Awaitable[Any]]


class Middleware:
    """Base class of middleware. Override only the hooks you need.

    Hook failure policy: an exception in ``on_startup`` aborts the worker's
    start; one in ``process`` fails the delivery like an actor error; one in
    ``on_shutdown`` is logged with the middleware's name and ignored.

    Attributes:
        actor_options: Actor and message options this middleware reads; an
            actor declared with an option no middleware accepts is an error.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset()

    def validate(self, broker: Broker, actor: str, options: Mapping[str, Any]) -> None:
        """Check the values of this middleware's options when ``actor`` is declared.

        Raises:
            TypeError: An option value of the wrong kind.
            ValueError: An option value out of range.
        """

    async def on_startup(self, worker: Worker) -> None:
        """Run when a worker starts, before it fetches messages."""

    async def on_shutdown(self, worker: Worker) -> None:
        """Run when a worker has stopped."""

    async def before_enqueue(self, broker: Broker, message: Message[Any]) -> Message[Any]:
        """Inspect or replace a message before it is encoded and sent."""
        return message

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Wrap the processing of one message; call ``call_next(ctx)`` to go on."""
        return await call_next(ctx)


def build_stack(middleware: Sequence[Middleware], innermost: CallNext) -> CallNext:
    """Fold ``middleware`` (outermost first) around ``innermost``, once."""
    call = innermost
    for m in reversed(middleware):
        if type(m).process is Middleware.process:
            continue  # a layer that only passes through costs nothing
        call = _layer(m, call)
    return call


def _layer(m: Middleware, call_next: CallNext) -> CallNext:
    process = m.process

    # A plain function returning the layer's coroutine, not a coroutine of its
    # own: every suspension of an actor (each await) is resumed through the
    # whole stack, so one coroutine frame less per layer is felt at
    # thousands of concurrent messages.
    def layer(ctx: Context) -> Awaitable[Any]:
        return process(ctx, call_next)

    return layer
