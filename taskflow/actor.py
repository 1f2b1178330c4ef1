"""Actors: functions declared with ``@broker.actor`` that run on workers."""

from __future__ import annotations

import datetime as dt
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import msgspec

from taskflow import _sync
from taskflow._time import seconds, utcnow
from taskflow.errors import InvalidArguments
from taskflow.message import Message
from taskflow.unique import unique_key

if TYPE_CHECKING:
    from taskflow.broker import Broker

P = ParamSpec("P")
R = TypeVar("R")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,199}$")
_CORE_OPTIONS = frozenset({"name", "queue", "priority"})
_ANY_TYPES = (Any, inspect.Parameter.empty)


class _Params:
    """An actor's signature, precomputed once for converting arguments on the worker."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.signature = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception:  # unresolvable annotations: convert nothing rather than fail
            hints = {}
        self.types = {
            name: hints.get(name, Any)
            for name, p in self.signature.parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        self.return_type: Any = hints.get("return", Any)
        kinds = [p.kind for p in self.signature.parameters.values()]
        # Fast path: plain positional parameters, converted one by one without binding.
        self.positional = [
            (name, self.types[name])
            for name, p in self.signature.parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self.simple = all(
            k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for k in kinds
        ) and all(p.default is p.empty for p in self.signature.parameters.values())

    def convert(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """Return ``args`` and ``kwargs`` converted to the annotated types.

        Raises:
            InvalidArguments: The arguments do not fit the signature or its types.
        """
        try:
            if self.simple and not kwargs and len(args) == len(self.positional):
                return [
                    _convert(value, tp)
                    for value, (_, tp) in zip(args, self.positional, strict=True)
                ], {}
            bound = self.signature.bind(*args, **kwargs)
            for name, value in bound.arguments.items():
                if name in self.types:
                    bound.arguments[name] = _convert(value, self.types[name])
            return list(bound.args), dict(bound.kwargs)
        except (TypeError, msgspec.ValidationError) as exc:
            raise InvalidArguments(str(exc)) from exc


def _refuse_reserved(broker: Broker, options: dict[str, Any], who: str) -> None:
    reserved = sorted(set(options) & broker.internal_options)
    if reserved:
        raise TypeError(
            f"{who} got option(s) {', '.join(map(repr, reserved))}, which taskflow reserves "
            "for pipelines and groups; compose with taskflow.pipeline / taskflow.group"
        )


def _convert(value: Any, tp: Any) -> Any:
    if tp in _ANY_TYPES:
        return value
    return msgspec.convert(value, tp, strict=False)


class Actor(Generic[P, R]):
    """A function that runs on workers, declared with ``@broker.actor``.

    ``send`` takes exactly the function's parameters. Calling the actor
    (``await actor(...)``) runs the function in-process without the broker.

    Attributes:
        fn: The wrapped function.
        name: Name used in messages (the function's name by default).
        queue: Queue its messages go to.
        priority: Default priority of its messages; higher runs first.
        options: Options for middleware (``max_retries``, ``time_limit``, ...).
        broker: The broker it is declared on.
        is_async: Whether ``fn`` is a coroutine function.
    """

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        *,
        broker: Broker,
        name: str | None,
        queue: str,
        priority: int,
        options: dict[str, Any],
    ) -> None:
        self.fn: Callable[..., Any] = fn
        self.name = name or fn.__name__
        if not _NAME.match(self.name):
            raise ValueError(f"invalid actor name {self.name!r}")
        if not _NAME.match(queue):
            raise ValueError(f"invalid queue name {queue!r}")
        self.queue = queue
        self.priority = priority
        self.broker = broker
        _refuse_reserved(broker, options, f"actor {self.name!r}")
        unknown = sorted(set(options) - broker.actor_options)
        if unknown:
            raise TypeError(
                f"actor {self.name!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(sorted(broker.actor_options | _CORE_OPTIONS))}"
            )
        for m in broker.middleware:
            m.validate(broker, self.name, options)
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.params = _Params(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"Actor({self.name!r}, queue={self.queue!r})"

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in-process, in this task, without the broker."""
        result = self.fn(*args, **kwargs)
        if self.is_async:
            result = await result
        value: R = result
        return value

    def option(self, name: str, default: Any = None) -> Any:
        """Return the actor's option ``name``, or ``default``."""
        return self.options.get(name, default)

    # -- building messages --------------------------------------------------

    def message(self, *args: P.args, **kwargs: P.kwargs) -> Message[R]:
        """Build a message for this actor without sending it."""
        return self.message_with_options(args=args, kwargs=kwargs)

    def message_with_options(
        self,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
        priority: int | None = None,
        **options: Any,
    ) -> Message[R]:
        """Build a message with per-message options.

        Raises:
            TypeError: An unknown or reserved option, or ``delay`` together with ``eta``.
            ValueError: A naive ``eta``.
        """
        _refuse_reserved(self.broker, options, "a message")
        unknown = sorted(set(options) - self.broker.actor_options)
        if unknown:
            raise TypeError(f"unknown message option(s) {', '.join(map(repr, unknown))}")
        now = utcnow()
        if delay is not None and eta is not None:
            raise TypeError("pass delay or eta, not both")
        if delay is not None and seconds(delay) > 0:
            eta = now + dt.timedelta(seconds=seconds(delay))
        elif eta is not None and eta.tzinfo is None:
            raise ValueError("eta must be a timezone-aware datetime")
        if options or self.options:
            unique_key(options, self.options, args, kwargs or {})
        message: Message[R] = Message(
            queue=self.queue,
            actor=self.name,
            args=tuple(args),
            kwargs=kwargs or {},
            options=options,
            enqueued_at=now,
            eta=eta,
            priority=self.priority if priority is None else priority,
        )
        return message.bind(self.broker)

    # -- sending ------------------------------------------------------------

    async def send(self, *args: P.args, **kwargs: P.kwargs) -> Message[R]:
        """Send a message to run this actor; returns once the broker holds it."""
        message = self.message_with_options(args=args, kwargs=kwargs)
        [message] = await self.broker.enqueue([message])
        return message

    async def send_with_options(
        self,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
        priority: int | None = None,
        **options: Any,
    ) -> Message[R]:
        """Send with ``delay`` or ``eta``, ``priority`` and per-message option overrides."""
        message = self.message_with_options(
            args=args, kwargs=kwargs, delay=delay, eta=eta, priority=priority, **options
        )
        [message] = await self.broker.enqueue([message])
        return message

    async def send_many(self, calls: Iterable[tuple[Any, ...] | Message[R]]) -> list[Message[R]]:
        """Send many messages in one batch.

        Each item is a tuple of positional arguments, or a message built with
        :meth:`message`.
        """
        messages = [
            c if isinstance(c, Message) else self.message_with_options(args=c) for c in calls
        ]
        return await self.broker.enqueue(messages)

    # -- sending from code without an event loop ---------------------------

    def send_sync(self, *args: P.args, **kwargs: P.kwargs) -> Message[R]:
        """:meth:`send` for code without an event loop: blocks until the broker holds it.

        Safe from any number of threads at once. The I/O runs on the loop the
        broker is connected on, else on the broker's background event-loop
        thread (one per process, started on first use).

        Raises:
            RuntimeError: Called from a thread whose event loop is running:
                ``await actor.send(...)`` there instead.
        """
        return _sync.run(
            self.broker,
            lambda: self.send(*args, **kwargs),
            sync_form=f"{self.name}.send_sync()",
            await_form=f"await {self.name}.send(...)",
        )

    def send_with_options_sync(
        self,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
        priority: int | None = None,
        **options: Any,
    ) -> Message[R]:
        """:meth:`send_with_options` for code without an event loop (see :meth:`send_sync`).

        Raises:
            RuntimeError: Called from a thread whose event loop is running.
        """
        return _sync.run(
            self.broker,
            lambda: self.send_with_options(
                args=args, kwargs=kwargs, delay=delay, eta=eta, priority=priority, **options
            ),
            sync_form=f"{self.name}.send_with_options_sync()",
            await_form=f"await {self.name}.send_with_options(...)",
        )

    def send_many_sync(self, calls: Iterable[tuple[Any, ...] | Message[R]]) -> list[Message[R]]:
        """:meth:`send_many` for code without an event loop (see :meth:`send_sync`).

        Raises:
            RuntimeError: Called from a thread whose event loop is running.
        """
        calls = list(calls)
        return _sync.run(
            self.broker,
            lambda: self.send_many(calls),
            sync_form=f"{self.name}.send_many_sync()",
            await_form=f"await {self.name}.send_many(...)",
        )

    def send_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Send with :meth:`send_sync` once the current Django transaction commits.

        Nothing is sent if the transaction rolls back; outside a transaction
        the message is sent at once. Needs Django (``taskflow.integrations.django``);
        the transaction is the one of the default database (for another, call
        ``transaction.on_commit(lambda: actor.send_sync(...), using=...)``).
        """
        from taskflow.integrations.django._commit import on_commit

        on_commit(lambda: self.send_sync(*args, **kwargs))
