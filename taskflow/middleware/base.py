"""The middleware contract: async, around-style, built into a stack once.

A layer never settles a message itself. It says what should happen to it
through its :class:`Context` (``ctx.retry(delay)``, ``ctx.dead_letter(reason)``,
``ctx.requeue()``, ``ctx.defer(delay)``), and once the stack has returned or
raised, the worker's settler does it: a message nobody marked is acked when
the stack returned, dead-lettered when it raised. The first mark wins, so an
inner layer's decision (retries', say) stands against an outer one's.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from taskflow.actor import Actor
    from taskflow.broker import Broker, Delivery
    from taskflow.message import Message
    from taskflow.worker import Worker

logger = logging.getLogger("taskflow.middleware")


class Outcome(enum.StrEnum):
    """What the worker's settler does with a message (string values, as before)."""

    #: Nothing decided yet: acked if the stack returns, dead-lettered if it raises.
    PENDING = "pending"
    #: Done: acked (set by the settler).
    ACK = "ok"
    #: Run again after ``ctx.delay`` seconds, one more retry counted.
    RETRY = "retry"
    #: To dead letters with ``ctx.reason``.
    DEAD = "dead"
    #: Handed back unchanged, ready at once, nothing counted (shutdown, cancellation).
    REQUEUE = "requeue"
    #: Put back for ``ctx.delay`` seconds, neither a retry nor a delivery counted.
    DEFER = "defer"


_RUNS_AGAIN = frozenset({Outcome.RETRY, Outcome.REQUEUE, Outcome.DEFER})


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
        outcome: What the settler will do: :attr:`Outcome.PENDING` until a
            layer marks it (or the settler settles it).
        delay: Seconds before the message runs again, for a retry or deferral.
        reason: The dead-letter reason, for :attr:`Outcome.DEAD`.
        error: The exception the actor raised, if it failed.
        result: What the actor returned, once it succeeded.
        interrupt: Raises an exception inside a sync actor's thread (set while one runs).
        state: Free room for middleware to share per-message data.
    """

    __slots__ = (
        "actor",
        "args",
        "broker",
        "delay",
        "delivery",
        "error",
        "interrupt",
        "kwargs",
        "message",
        "outcome",
        "reason",
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
        self.outcome = Outcome.PENDING
        self.delay = 0.0
        self.reason = ""
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

    # -- marking the outcome (the worker's settler carries it out) -----------

    def retry(self, delay: float = 0.0) -> bool:
        """Run the message again after ``delay`` seconds, counting one more retry.

        Returns:
            Whether this mark took effect (``False`` if an outcome was marked before).
        """
        return self._mark(Outcome.RETRY, delay=delay)

    def dead_letter(self, reason: str) -> bool:
        """Send the message to dead letters with ``reason`` (``"kind: detail"``)."""
        return self._mark(Outcome.DEAD, reason=reason)

    def requeue(self) -> bool:
        """Hand the message back unchanged, ready at once, counting neither retry nor failure."""
        return self._mark(Outcome.REQUEUE)

    def defer(self, delay: float) -> bool:
        """Put the message back for ``delay`` seconds (a full rate limit, say).

        Neither a retry nor a delivery is counted towards ``max_deliveries``.
        """
        return self._mark(Outcome.DEFER, delay=delay)

    @property
    def decided(self) -> bool:
        """Whether an outcome was marked: the message is not simply acked."""
        return self.outcome is not Outcome.PENDING

    @property
    def runs_again(self) -> bool:
        """Whether the message will run again (retried, requeued or deferred)."""
        return self.outcome in _RUNS_AGAIN

    def _mark(self, outcome: Outcome, *, delay: float = 0.0, reason: str = "") -> bool:
        if self.outcome is not Outcome.PENDING:
            return False
        self.outcome = outcome
        self.delay = max(delay, 0.0)
        self.reason = reason
        return True


CallNext = Callable[[Context], Awaitable[Any]]


class Middleware:
    """Base class of middleware. Override only the hooks you need.

    Hook failure policy: an exception in ``on_startup`` aborts the worker's
    start; one in ``process`` fails the delivery like an actor error; one in
    ``on_shutdown`` or ``after_settle`` is logged with the middleware's name
    and ignored.

    Attributes:
        actor_options: Actor and message options this middleware reads; an
            actor declared with an option no middleware accepts is an error.
        internal_options: Message options this middleware reads that only
            taskflow writes; reserved, refused as actor or message options.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset()
    internal_options: ClassVar[frozenset[str]] = frozenset()

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

    async def after_settle(
        self, worker: Worker, delivery: Delivery, outcome: Outcome, reason: str
    ) -> None:
        """Run once the worker's settler has carried out ``outcome`` for ``delivery``.

        Called for every message the worker settles, from its one settler:
        those that went through the stack, and those refused before it
        (unknown actor, invalid arguments). ``reason`` is the dead-letter
        reason for :attr:`Outcome.DEAD`, else empty. Not called when the
        settlement failed (the broker redelivers the message), and only for
        middleware that override it.
        """


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
