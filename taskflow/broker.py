"""The broker: the user's hub.

:class:`Broker` holds the actor registry, the middleware and the codec. Its
public methods do the shared bookkeeping (encoding, size limits, delivery
limits, dead-lettering bad input) and call the small ``_``-prefixed hooks of
:class:`taskflow._transport.Transport`, which a transport subclass implements.
The hooks know nothing about actors or middleware; they move bytes. The
contract every transport keeps is written down in :mod:`taskflow._transport`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, Self, TypeVar, overload

import anyio
import msgspec

from taskflow import _sync
from taskflow._delivery import GROWTH_ALLOWANCE, Delivery
from taskflow._inspecting import DeadLetter, Inspecting
from taskflow._inspection import MessageInfo, WorkerInfo
from taskflow._time import seconds, utcnow
from taskflow._transport import DeadRecord, Envelope, QueueStats, Receipt, Transport
from taskflow.actor import Actor
from taskflow.cancellation import CANCEL_TTL
from taskflow.errors import (
    DecodeError,
    JoinTimeout,
    MessageTooLarge,
    MiddlewareError,
    ResultsNotConfigured,
)
from taskflow.message import Codec, Message
from taskflow.middleware import Middleware, TimeLimit, default_middleware, with_results
from taskflow.results import store_refusal
from taskflow.scheduling import DEFAULT_MISFIRE_GRACE, Schedule
from taskflow.unique import UNIQUE_OPTIONS, claim_unique

if TYPE_CHECKING:
    from types import TracebackType

    from taskflow.results import ResultBackend

# Re-exported: transports and user code import these from here.
__all__ = [
    "Broker",
    "DeadLetter",
    "DeadRecord",
    "Delivery",
    "Envelope",
    "GROWTH_ALLOWANCE",
    "JoinTimeout",
    "MessageInfo",
    "QueueStats",
    "Receipt",
    "Transport",
    "WorkerInfo",
    "seconds",
]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("taskflow.broker")

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
DEFAULT_DEAD_LETTER_TTL = 7 * 24 * 3600.0


class _ActorDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Actor[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Actor[P, R]: ...


def _checked(middleware: Sequence[object]) -> list[Middleware]:
    for m in middleware:
        if not isinstance(m, Middleware):
            hint = f"; write {m.__name__}()" if isinstance(m, type) else ""
            raise MiddlewareError(f"middleware must be Middleware objects, not {m!r}{hint}")
    return [m for m in middleware if isinstance(m, Middleware)]


class Broker(Inspecting):
    """Base class of every broker: actor registry, middleware, codec and the contract.

    Args:
        middleware: The middleware stack; ``None`` means the default one
            (age limit, time limit, retries, results when enabled, callbacks,
            current message).
        codec: ``"json"`` (default) or ``"msgpack"``.
        max_message_size: Largest encoded message accepted, in bytes.
        max_deliveries: Deliveries after which a message is dead-lettered.
        dead_letter_ttl: Seconds dead letters are kept.
        results: ``True`` to keep results on this broker's own store, or a
            result backend object.

    Raises:
        MiddlewareError: An entry of ``middleware`` is not a Middleware object.
    """

    def __init__(
        self,
        *,
        middleware: Sequence[Middleware] | None = None,
        codec: Literal["json", "msgpack"] = "json",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_deliveries: int = 20,
        dead_letter_ttl: float | dt.timedelta = DEFAULT_DEAD_LETTER_TTL,
        results: bool | ResultBackend | None = None,
    ) -> None:
        self.codec = Codec(codec)
        self.max_message_size = max_message_size
        self.max_deliveries = max_deliveries
        self.dead_letter_ttl = seconds(dead_letter_ttl)
        self.actors: dict[str, Actor[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        self.results: ResultBackend | None = self._results_backend(results)
        if middleware is None:
            stack = default_middleware(results=self.results)
        else:
            stack = with_results(_checked(middleware), self.results)
        self.middleware: tuple[Middleware, ...] = tuple(stack)
        # Built once: the enqueue hooks of the layers that override before_enqueue.
        self._enqueue_hooks = tuple(
            m.before_enqueue
            for m in self.middleware
            if type(m).before_enqueue is not Middleware.before_enqueue
        )
        self._connected = False
        self._connect_lock: anyio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # where the connections live
        self._loop_pid = 0

    # -- actors -------------------------------------------------------------

    @property
    def actor_options(self) -> frozenset[str]:
        """Every actor option that this broker's middleware accepts."""
        names: set[str] = set(UNIQUE_OPTIONS)
        for m in self.middleware:
            names |= m.actor_options
        return frozenset(names)

    @property
    def internal_options(self) -> frozenset[str]:
        """Message options only taskflow writes (composition's); refused from users."""
        names: set[str] = set()
        for m in self.middleware:
            names |= m.internal_options
        return frozenset(names)

    @overload
    def actor(self, fn: Callable[P, Awaitable[R]], /) -> Actor[P, R]: ...
    @overload
    def actor(self, fn: Callable[P, R], /) -> Actor[P, R]: ...
    @overload
    def actor(
        self,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        **options: Any,
    ) -> _ActorDecorator: ...

    def actor(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        **options: Any,
    ) -> Any:
        """Declare an actor: ``@broker.actor`` or ``@broker.actor(queue=..., max_retries=...)``.

        Raises:
            TypeError: An option no middleware of this broker accepts.
            ValueError: An actor of the same name is already declared.
        """

        def decorate(fn: Callable[..., Any]) -> Actor[Any, Any]:
            actor: Actor[Any, Any] = Actor(
                fn, broker=self, name=name, queue=queue, priority=priority, options=options
            )
            if actor.name in self.actors:
                raise ValueError(f"an actor named {actor.name!r} is already declared")
            self.actors[actor.name] = actor
            return actor

        return decorate(fn) if fn is not None else decorate

    def get_actor(self, name: str) -> Actor[Any, Any] | None:
        """Return the actor declared under ``name``, if any."""
        return self.actors.get(name)

    def schedule(
        self,
        actor: Actor[Any, Any],
        *,
        cron: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        tz: str | dt.tzinfo = "UTC",
        misfire_grace: float | dt.timedelta = DEFAULT_MISFIRE_GRACE,
    ) -> Schedule:
        """Send ``actor`` with ``args``/``kwargs`` at every fire time of ``cron``.

        Every worker of this broker runs the schedules; each fire time is
        claimed on the broker, so it is sent once however many workers run.

        Args:
            actor: An actor of this broker.
            cron: Five fields, or six with a leading seconds field.
            args: Positional arguments of each message.
            kwargs: Keyword arguments of each message.
            name: The schedule's name; default the actor's name.
            tz: The time zone of the fire times (IANA name; default UTC).
            misfire_grace: Seconds after a fire time, missed while no worker
                ran, within which a worker that comes back still sends it.

        Raises:
            ValueError: A bad expression or zone, or a schedule of that name exists.
            TypeError: ``actor`` is not an actor of this broker.
        """
        if not isinstance(actor, Actor) or actor.broker is not self:
            raise TypeError(f"schedule() takes an actor of this broker, not {actor!r}")
        entry = Schedule(
            actor, cron, args=args, kwargs=kwargs, name=name, tz=tz, misfire_grace=misfire_grace
        )
        if entry.name in self.schedules:
            raise ValueError(f"a schedule named {entry.name!r} already exists; pass name=")
        self.schedules[entry.name] = entry
        return entry

    def cron(
        self,
        expr: str,
        *,
        tz: str | dt.tzinfo = "UTC",
        name: str | None = None,
        misfire_grace: float | dt.timedelta = DEFAULT_MISFIRE_GRACE,
    ) -> Callable[[Actor[P, R]], Actor[P, R]]:
        """Schedule an actor without arguments: ``@broker.cron("*/5 * * * *")`` over ``@broker.actor``.

        See :meth:`schedule` for the arguments.
        """

        def decorate(actor: Actor[P, R]) -> Actor[P, R]:
            if not isinstance(actor, Actor):
                raise TypeError("@broker.cron goes above @broker.actor")
            self.schedule(actor, cron=expr, name=name, tz=tz, misfire_grace=misfire_grace)
            return actor

        return decorate

    @property
    def queues(self) -> list[str]:
        """The queues of the declared actors, sorted."""
        return sorted({a.queue for a in self.actors.values()})

    # -- lifecycle ----------------------------------------------------------

    async def connect(self) -> None:
        """Connect to the server (idempotent; ``send`` does it lazily).

        Connections made on an event loop that is now closed (a second
        ``asyncio.run(actor.send(...))``) are dropped and made afresh.
        """
        if self._connected:
            if self._loop is None or not self._loop.is_closed():
                return
            await self._drop_stale_connections()
        if self._connect_lock is None:
            self._connect_lock = anyio.Lock()
        async with self._connect_lock:
            if not self._connected:
                await self._connect()
                if self.results is not None:
                    await self.results.connect(self)
                self._connected = True
                self._loop, self._loop_pid = asyncio.get_running_loop(), os.getpid()

    async def close(self) -> None:
        """Close connections; the broker may be connected again later."""
        if self._connected:
            self._connected = False
            if self.results is not None:
                await self.results.close()
            await self._close()

    async def aclose(self) -> None:
        """Same as :meth:`close`."""
        await self.close()

    def close_sync(self) -> None:
        """Close connections from code without an event loop (see :meth:`Actor.send_sync`).

        Optional: a broker used by the ``*_sync`` methods is also closed at
        interpreter exit. It stops the broker's background event-loop thread;
        the next ``*_sync`` call starts another.

        Raises:
            RuntimeError: Called from a thread whose event loop is running:
                ``await broker.close()`` there instead.
        """
        _sync.refuse_in_running_loop("broker.close_sync()", "await broker.close()")
        _sync.portal(self).close()

    def _connected_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the connections belong to, when connected in this process."""
        if self._connected and self._loop_pid == os.getpid():
            return self._loop
        return None

    async def _drop_stale_connections(self) -> None:
        """Close what can be closed of connections made on a closed loop, then forget them.

        Those of a parent process (this one was forked) are only forgotten.
        """
        if self._loop_pid != os.getpid():
            _sync.forget_connections(self)
            return
        try:
            with anyio.fail_after(10):
                await self.close()
        except Exception as exc:  # sockets of a closed loop cannot be closed from this one
            logger.debug("closing connections of a closed event loop: %r", exc)
        self._forget_connections()

    def _forget_connections(self) -> None:
        """Drop connections made on a loop that stopped, or by the parent of a forked process.

        They are unusable here and are dropped without closing (closing could
        disturb the process that owns them); the next use connects afresh.
        Transports whose ``_connect`` does not replace every connection
        extend this.
        """
        self._connected = False
        self._connect_lock = None
        self._loop = None
        if self.results is not None:
            self.results._forget_connections()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- producing ----------------------------------------------------------

    async def enqueue(self, messages: Sequence[Message[Any]]) -> list[Message[Any]]:
        """Encode ``messages`` and hand them to the server in one batch.

        Returns the messages sent: for a message with a ``unique_key`` that
        another message holds, that message (its id) instead, and nothing of
        it is enqueued.

        Raises:
            MessageTooLarge: A message is over ``max_message_size``; nothing is sent.
            BrokerUnavailable: The server could not be reached.
        """
        if not messages:
            return []
        sent = list(messages)
        if any("unique_key" in m.options for m in messages):
            await self.connect()
            sent, messages = await self._claim_unique(sent)
        hooks = self._enqueue_hooks
        by_queue: dict[str, list[Envelope]] = {}
        now = utcnow()
        for message in messages:
            for hook in hooks:
                message = await hook(self, message)
            body = self.codec.encode(message)
            if len(body) > self.max_message_size:
                raise MessageTooLarge(len(body), self.max_message_size)
            delay = (message.eta - now).total_seconds() if message.eta is not None else 0.0
            envelope = Envelope(message.id, body, message.priority, max(delay, 0.0))
            by_queue.setdefault(message.queue, []).append(envelope)
        await self.connect()
        for queue, envelopes in by_queue.items():
            await self._enqueue(queue, envelopes)
        return sent

    async def _claim_unique(
        self, messages: list[Message[Any]]
    ) -> tuple[list[Message[Any]], list[Message[Any]]]:
        """Claim each unique key: (what each send returns, what is enqueued)."""
        sent, fresh = [], []
        for message in messages:
            holder = await claim_unique(self, message) if "unique_key" in message.options else None
            sent.append(holder or message)
            if holder is None:
                fresh.append(message)
        return sent, fresh

    # -- control --------------------------------------------------------------

    async def cancel(self, message_id: str) -> None:
        """Cancel a message wherever it is: it never runs, or stops where it runs.

        A ready or delayed message is refused when delivered; a running one
        is stopped within about a second on whichever worker holds it (async
        actors: cancelled; sync actors: ``taskflow.Cancelled`` raised in their
        thread). It is dead-lettered with reason ``cancelled``, not retried,
        and its result raises ``ResultFailed`` of type ``Cancelled``.
        """
        await self.connect()
        await self._cancel(message_id, CANCEL_TTL)

    def cancel_sync(self, message_id: str) -> None:
        """:meth:`cancel` for code without an event loop.

        Raises:
            RuntimeError: Called from a thread whose event loop is running.
        """
        _sync.run(
            self,
            lambda: self.cancel(message_id),
            sync_form="broker.cancel_sync()",
            await_form="await broker.cancel(...)",
        )

    # -- consuming ----------------------------------------------------------

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncGenerator[Delivery, None]:
        """Yield deliveries from ``queue``, fetching up to ``prefetch`` at a time.

        Bad input never reaches the caller: bodies over the size limit,
        undecodable bodies and messages past ``max_deliveries`` go to dead
        letters with their reason and a warning.
        """
        await self.connect()
        time_limit = self._longest_time_limit(queue)
        async with aclosing(self._consume(queue, max(prefetch, 1), time_limit)) as receipts:
            async for receipt in receipts:
                delivery = await self._accept(queue, receipt)
                if delivery is not None:
                    yield delivery

    def _longest_time_limit(self, queue: str) -> float | None:
        """The longest ``time_limit`` of ``queue``'s actors (``None``: one has no limit)."""
        default = next((m.time_limit for m in self.middleware if isinstance(m, TimeLimit)), None)
        longest = 0.0
        for actor in self.actors.values():
            if actor.queue == queue:
                limit = actor.option("time_limit", default)
                if limit is None:
                    return None
                longest = max(longest, seconds(limit))
        return longest

    async def _accept(self, queue: str, receipt: Receipt) -> Delivery | None:
        size = len(receipt.body)
        # What a retry adds is allowed for: a message sent within the limit
        # is never dead-lettered as too large because it was retried.
        if size > self.max_message_size + GROWTH_ALLOWANCE:
            reason = f"too_large: {size} bytes over the limit of {self.max_message_size}"
        elif receipt.delivery_count > self.max_deliveries:
            reason = f"delivery_limit_exceeded: delivered {receipt.delivery_count} times"
        else:
            try:
                message = self.codec.decode(receipt.body)
            except DecodeError as exc:
                reason = exc.reason
            else:
                return Delivery(self, queue, message.bind(self), receipt)
        logger.warning(
            "dead-lettering message %s from queue %s (%d bytes, sha256 %s): %s",
            receipt.message_id,
            queue,
            size,
            hashlib.sha256(receipt.body).hexdigest()[:16],
            reason.split(":", 1)[0],
        )
        await receipt.dead_letter(reason)
        await store_refusal(self.results, receipt.message_id, reason)
        return None

    # -- results ------------------------------------------------------------

    def _results_backend(self, results: bool | ResultBackend | None) -> ResultBackend | None:
        if results is True:
            return self._default_results()
        if results is False or results is None:
            return None
        return results

    def _default_results(self) -> ResultBackend:
        """The backend ``results=True`` means for this broker; override per transport."""
        raise TypeError(f"{type(self).__name__} has no built-in result store; pass a backend")

    async def get_result(
        self, message: Message[Any], *, timeout: float | dt.timedelta | None
    ) -> Any:
        """Wait for ``message``'s result; see :meth:`Message.result`."""
        if self.results is None:
            raise ResultsNotConfigured(f"{type(self).__name__} was built without results=")
        await self.connect()
        record = await self.results.fetch(message.id, None if timeout is None else seconds(timeout))
        record.raise_for_failure()
        return self._convert_result(message.actor, record.value)

    def _convert_result(self, actor_name: str, value: Any) -> Any:
        """Convert a stored result to the return annotation of the actor named ``actor_name``.

        Values of actors this broker does not declare, or that return ``Any``,
        come back as stored.
        """
        actor = self.actors.get(actor_name)
        if actor is None or actor.params.return_type is Any:
            return value
        return msgspec.convert(value, actor.params.return_type, strict=False)

    # -- building from a URL --------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build the broker from a URL (see ``taskflow.broker_from_url``)."""
        raise TypeError(f"{cls.__name__} cannot be built from a URL")
