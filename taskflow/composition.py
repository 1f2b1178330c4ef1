"""Groups and pipelines: messages composed to run in parallel or one after another.

Build the messages with ``actor.message(...)``, then::

    g = taskflow.group([add.message(1, 2), add.message(3, 4)])
    g.add_completion_callback(notify.message("all added"))
    await g.run()
    assert await g.results(timeout=5) == [3, 7]

    p = taskflow.pipeline([add.message(1, 2), add.message(10)])  # add(10, 3)
    await p.run()
    assert await p.result(timeout=5) == 13

They nest: a group may be a pipeline step (the next step receives the list
of the group's results, and each member's first step receives the previous
step's result) and pipelines may be group members. Everything a
composition needs travels in its messages' options and in the result
backend, so no process has to stay alive to see it through; see
:mod:`taskflow._flow` for how.

Every message of a composition is sent with ``store_results=True``; reading
results and completing groups need a broker built with ``results=``.
A message object may appear only once in a composition, and a composition
runs once.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Self

import msgspec

from taskflow._flow import (
    INTERNAL_OPTIONS,
    GroupInfo,
    GroupNode,
    MessageNode,
    Node,
    Runner,
    Tail,
)
from taskflow._ids import new_id
from taskflow._time import seconds
from taskflow.actor import Actor
from taskflow.errors import ResultsNotConfigured, ResultTimeout
from taskflow.message import Message
from taskflow.middleware.composition import Composition

if TYPE_CHECKING:
    from taskflow.broker import Broker
    from taskflow.results import ResultBackend

__all__ = ["group", "pipeline"]


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Actor):
        return obj.name
    raise NotImplementedError(f"cannot encode {type(obj).__name__} in a message")


class _Compiler:
    """Turns a composition into nodes, checking that no message appears twice."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.counts_groups = False

    def node(self, child: Message[Any] | group | pipeline, tail: Tail, *, nested: bool) -> Node:
        if isinstance(child, Message):
            return self.message(child, tail)
        return child._compile(self, tail, nested=nested)

    def message(self, message: Message[Any], tail: Tail) -> MessageNode:
        if message.id in self.seen:
            raise ValueError(f"message {message.id} appears twice in one composition")
        self.seen.add(message.id)
        data: dict[str, Any] = msgspec.to_builtins(message, enc_hook=_enc_hook)
        options = {k: v for k, v in data["options"].items() if k not in INTERNAL_OPTIONS}
        options["store_results"] = True
        if tail.pipe_target is not None:
            options["pipe_target"] = msgspec.to_builtins(tail.pipe_target)
        if tail.group_ref is not None:
            options["group_ref"] = msgspec.to_builtins(tail.group_ref)
            # Kept until the group can no longer complete, not just the result TTL.
            ttl = seconds(options.get("result_ttl") or 0.0)
            options["result_ttl"] = max(ttl, tail.group_ref.ttl)
        data["options"] = options
        return MessageNode(data)


def _children(children: Iterable[Message[Any] | group | pipeline]) -> list[Any]:
    items = list(children)
    for item in items:
        if not isinstance(item, Message | group | pipeline):
            raise TypeError(
                f"compose messages (actor.message(...)), groups and pipelines, not {item!r}"
            )
    return items


def _broker_of(items: Iterable[Message[Any] | group | pipeline]) -> Broker | None:
    found: Broker | None = None
    for item in items:
        broker = item.__dict__.get("_broker") if isinstance(item, Message) else item.broker
        if broker is not None and found is not None and broker is not found:
            raise ValueError("a composition's messages must all belong to one broker")
        found = found or broker
    return found


def _result_id(child: Message[Any] | group | pipeline) -> str:
    return child.id if isinstance(child, Message) else child.result_id


class _Composed:
    """What groups and pipelines share: the broker, running once, reading results."""

    children: list[Any]
    _broker: Broker | None
    _ran: bool

    @property
    def broker(self) -> Broker | None:
        """The broker of the composed messages."""
        return self._broker

    @property
    def result_id(self) -> str:
        """The id the composition's result is stored under."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.children)

    def __iter__(self) -> Iterator[Message[Any] | group | pipeline]:
        return iter(self.children)

    def _compile(self, compiler: _Compiler, tail: Tail, *, nested: bool) -> Node:
        raise NotImplementedError

    def _needs(self) -> Broker:
        if self._broker is None:
            raise ValueError("an empty composition has no broker to run on")
        return self._broker

    async def run(self) -> Self:
        """Send the messages that start the composition; returns once the broker holds them.

        Raises:
            RuntimeError: The composition was run before.
            TypeError: The broker's middleware has no :class:`Composition` layer.
            ResultsNotConfigured: Groups need a broker built with ``results=``.
        """
        if self._ran:
            raise RuntimeError(f"{type(self).__name__} already ran; build a new one")
        broker = self._needs()
        if not any(isinstance(m, Composition) for m in broker.middleware):
            raise TypeError("the broker's middleware has no Composition layer")
        compiler = _Compiler()
        node = self._compile(compiler, Tail(), nested=False)
        if compiler.counts_groups and broker.results is None:
            raise ResultsNotConfigured(
                f"group completion needs a result backend: build {type(broker).__name__} "
                "with results="
            )
        runner = Runner(broker)
        await runner.launch(node)
        await runner.flush()
        self._ran = True
        return self

    async def _backend(self) -> ResultBackend:
        broker = self._needs()
        if broker.results is None:
            raise ResultsNotConfigured(f"{type(broker).__name__} was built without results=")
        await broker.connect()
        return broker.results

    def _convert(self, child: Message[Any] | group | pipeline, value: Any) -> Any:
        if isinstance(child, Message):
            return self._needs()._convert_result(child.actor, value)
        if isinstance(child, pipeline):
            return child._convert(child.children[-1], value)
        return [child._convert(c, v) for c, v in zip(child.children, value, strict=True)]


class pipeline(_Composed):
    """Messages run one after another, each step's result appended to the next step's arguments.

    Args:
        children: The steps: messages, groups or pipelines (flattened).

    Raises:
        ValueError: No steps.
    """

    def __init__(self, children: Iterable[Message[Any] | group | pipeline]) -> None:
        self.children = _children(children)
        if not self.children:
            raise ValueError("a pipeline needs at least one step")
        self._broker = _broker_of(self.children)
        self._ran = False

    def __repr__(self) -> str:
        return f"pipeline({self.children!r})"

    @property
    def result_id(self) -> str:
        """The id the last step's result is stored under."""
        return _result_id(self.children[-1])

    def _compile(self, compiler: _Compiler, tail: Tail, *, nested: bool) -> Node:
        *steps, last = self.children
        node = compiler.node(last, tail, nested=True)
        for step in reversed(steps):
            node = compiler.node(step, Tail(pipe_target=node), nested=True)
        return node

    async def result(self, *, timeout: float | dt.timedelta | None = 10.0) -> Any:
        """Wait for the last step's result (converted to its actor's return annotation).

        Raises:
            ResultFailed: A step failed for good; it carries that step's error.
            ResultTimeout: No result within ``timeout`` seconds.
            ResultsNotConfigured: The broker was built without ``results=``.
        """
        backend = await self._backend()
        record = await backend.fetch(self.result_id, None if timeout is None else seconds(timeout))
        record.raise_for_failure()
        return self._convert(self.children[-1], record.value)


class group(_Composed):
    """Messages run in parallel, with results in order and completion callbacks.

    Args:
        children: The members: messages, pipelines or groups.

    Attributes:
        id: The group's id (its counters and, when nested, its result use it).
    """

    def __init__(self, children: Iterable[Message[Any] | group | pipeline]) -> None:
        self.children = _children(children)
        self.id = new_id()
        self.callbacks: list[Message[Any] | group | pipeline] = []
        self._broker = _broker_of(self.children)
        self._ran = False

    def __repr__(self) -> str:
        return f"group({self.children!r})"

    @property
    def result_id(self) -> str:
        """The id the list of results is stored under when the group is nested."""
        return self.id

    def add_completion_callback(self, message: Message[Any] | group | pipeline) -> Self:
        """Send ``message`` once every member succeeded (exactly once, whichever worker).

        The completion is counted by the result backend, so it works across
        worker processes and survives a worker dying mid-group. If a member
        fails for good, the group never completes and the callback is not sent.
        """
        self.callbacks.append(_children([message])[0])
        self._broker = self._broker or _broker_of([message])
        return self

    def _compile(self, compiler: _Compiler, tail: Tail, *, nested: bool) -> Node:
        if not nested and not self.callbacks and not tail:
            # A plain fan-out: nothing to count.
            members = [compiler.node(c, Tail(), nested=True) for c in self.children]
            return GroupNode(members, GroupInfo(id=self.id, ids=[]))
        compiler.counts_groups = True
        info = GroupInfo(
            id=self.id,
            ids=[_result_id(c) for c in self.children],
            callbacks=[compiler.node(c, Tail(), nested=True) for c in self.callbacks],
            store=nested,
            pipe_target=tail.pipe_target,
            group_ref=tail.group_ref,
        )
        members = [
            compiler.node(c, Tail(group_ref=info.ref(i)), nested=True)
            for i, c in enumerate(self.children)
        ]
        return GroupNode(members, info)

    async def results(self, *, timeout: float | dt.timedelta | None = 10.0) -> list[Any]:
        """Wait for every member's result; return them in the group's order.

        A pipeline member gives its last step's result, a group member its list.

        Raises:
            ResultFailed: A member failed for good (the first in order that did).
            ResultTimeout: Not every result arrived within ``timeout`` seconds.
            ResultsNotConfigured: The broker was built without ``results=``.
        """
        backend = await self._backend()
        limit = None if timeout is None else seconds(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        values = []
        for child in self.children:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                record = await backend.fetch(_result_id(child), left)
            except ResultTimeout:
                raise ResultTimeout(f"group {self.id}: not every result within {limit} s") from None
            record.raise_for_failure()
            values.append(self._convert(child, record.value))
        return values
