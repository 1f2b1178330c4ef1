"""Pipelines and group completion, driven by what each message carries.

:func:`taskflow.pipeline` and :func:`taskflow.group` compile a composition
into *nodes* (a message, or a group of nodes) and store what comes after a
node in the options of the message that ends it:

* ``pipe_target``: the next pipeline step, a node. When the message
  succeeds, the node is sent with the result appended to its positional
  arguments (to every member's first step if it is a group), unless its
  message has ``pipe_ignore=True``.
* ``group_info``: the group this message ends a member of (:class:`GroupInfo`):
  the group's id, the result ids of its members in order, its completion
  callbacks and what comes after the group itself.

When a member succeeds, its id is added to a set kept by the result backend
(``add``), which counts distinct members: a member that runs again after a
crash is not counted twice, and the count lives on the server, not in any
worker. The member that brings the count to the group's size claims the
completion with an atomic counter (``incr``) and sends the callbacks and the
next step. If that worker dies after claiming and before sending (or the
send fails and the member is retried), the member runs again, finds the
completion claimed but not marked done, and sends it then. A completion callback therefore runs once, and is not lost to a
crash; only a worker dying between sending and marking done (a few
milliseconds) can make it run twice.

A message that fails for good stops what comes after it: the failure is
stored as the result of every later step and of the enclosing groups, so
``pipeline.result()`` and ``group.results()`` raise
:class:`taskflow.ResultFailed` at once instead of timing out. A group whose
member failed never completes and its callbacks never run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from taskflow.broker import seconds
from taskflow.errors import ResultsNotConfigured, ResultTimeout
from taskflow.message import Message, utcnow
from taskflow.middleware.base import CallNext, Context, Middleware
from taskflow.middleware.callbacks import follow_up_failed
from taskflow.middleware.results import DEFAULT_RESULT_TTL, Results
from taskflow.results import ResultBackend, ResultRecord, failure_record

if TYPE_CHECKING:
    from taskflow.broker import Broker

logger = logging.getLogger("taskflow.middleware.composition")

#: Seconds the group counters are kept, counted from the last member's completion.
GROUP_TTL = 7 * 24 * 3600.0
#: Seconds a completion waits for the stored result of a member that completed.
_MEMBER_RESULT_TIMEOUT = 5.0


class MessageNode(msgspec.Struct, frozen=True, tag="m"):
    """A message to send, as builtins (its options carry what follows it)."""

    message: dict[str, Any]

    @property
    def result_id(self) -> str:
        """The id its result is stored under."""
        return str(self.message["id"])


class GroupNode(msgspec.Struct, frozen=True, tag="g"):
    """A group: its members, each ending with a message that points back to ``info``."""

    members: list[Node]
    info: GroupInfo

    @property
    def result_id(self) -> str:
        """The id its result (the list of member results) is stored under."""
        return self.info.id


Node = MessageNode | GroupNode


class GroupInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the last message of each group member knows about the group.

    Attributes:
        id: The group's id; its result is stored under it when ``store`` is set.
        ids: The result ids of the members, in the group's order.
        callbacks: Nodes sent once when every member succeeded.
        store: Whether to store the list of member results under ``id``
            (for groups inside a pipeline or another group).
        pipe_target: The next pipeline step after the group, which receives
            the list of results.
        group_info: The enclosing group, if this group is a member of one.
        ttl: Seconds the group's counters and stored result are kept.
    """

    id: str
    ids: list[str]
    callbacks: list[Node] = []
    store: bool = False
    pipe_target: Node | None = None
    group_info: GroupInfo | None = None
    ttl: float = GROUP_TTL


class Tail(msgspec.Struct, frozen=True):
    """What comes after a node: the next pipeline step, or the group it ends a member of."""

    pipe_target: Node | None = None
    group_info: GroupInfo | None = None

    @classmethod
    def of_options(cls, options: dict[str, Any]) -> Tail:
        """Read the tail from a message's options."""
        return msgspec.convert(
            {"pipe_target": options.get("pipe_target"), "group_info": options.get("group_info")},
            cls,
        )

    @classmethod
    def of_node(cls, node: Node) -> Tail:
        """The tail of ``node``: in its message's options, or in its group's info."""
        if isinstance(node, MessageNode):
            return cls.of_options(node.message.get("options") or {})
        return cls(node.info.pipe_target, node.info.group_info)

    def __bool__(self) -> bool:
        return self.pipe_target is not None or self.group_info is not None


def _group_key(group_id: str, part: str) -> str:
    return f"group:{group_id}:{part}"


class Runner:
    """Sends nodes and completes groups for one message, then flushes in one batch.

    Messages to send are collected and sent together by :meth:`flush`; the
    "completion done" marks are written only after that send succeeded.
    """

    def __init__(
        self, broker: Broker, *, rerun: bool = False, ttl: float = DEFAULT_RESULT_TTL
    ) -> None:
        self.broker = broker
        self.rerun = rerun
        self.ttl = ttl
        self.out: list[Message[Any]] = []
        self._done: list[tuple[str, float]] = []

    @property
    def backend(self) -> ResultBackend:
        """The broker's result backend (groups need one)."""
        if self.broker.results is None:
            raise ResultsNotConfigured(
                f"groups need a result backend: build {type(self.broker).__name__} with results="
            )
        return self.broker.results

    async def flush(self) -> None:
        """Send what was collected, then mark the completed groups done."""
        out, self.out = self.out, []
        await self.broker.enqueue(out)
        done, self._done = self._done, []
        for key, ttl in done:
            await self.backend.store(key, ResultRecord(ok=True), ttl)

    # -- sending --------------------------------------------------------------

    async def launch(self, node: Node, extra: tuple[Any, ...] = ()) -> None:
        """Send ``node``, with ``extra`` appended to the arguments of its first messages."""
        if isinstance(node, MessageNode):
            message: Message[Any] = msgspec.convert(node.message, Message)
            if extra and not message.options.get("pipe_ignore"):
                message = msgspec.structs.replace(message, args=(*message.args, *extra))
            message = msgspec.structs.replace(message, enqueued_at=utcnow())
            self.out.append(message.bind(self.broker))
            return
        if not node.members:
            await self._complete(node.info, [])
            return
        for member in node.members:
            await self.launch(member, extra)

    # -- success --------------------------------------------------------------

    async def succeed(self, tail: Tail, value: Any, member_id: str) -> None:
        """Go on after ``member_id`` (a message or a group) succeeded with ``value``."""
        if tail.pipe_target is not None:
            await self.launch(tail.pipe_target, (value,))
        elif tail.group_info is not None:
            await self._member_done(tail.group_info, member_id)

    async def _member_done(self, info: GroupInfo, member_id: str) -> None:
        backend = self.backend
        finished = await backend.add(_group_key(info.id, "members"), member_id, info.ttl)
        if finished < len(info.ids):
            return
        claim = await backend.incr(_group_key(info.id, "claim"), info.ttl)
        if claim > 1:
            # Claimed before, by an earlier run of this member (only a member
            # counted before sees the full count again). Go on if that run
            # never finished sending: it died, or its send failed and retried.
            if not self.rerun or await self._completion_done(info):
                return
            logger.warning("group %s: completing again after a worker died mid-completion", info.id)
        self._done.append((_group_key(info.id, "done"), info.ttl))
        values: list[Any] = []
        if info.store or info.pipe_target is not None:
            try:
                values = await self._member_values(info)
            except Exception as exc:
                await self.fail(Tail(info.pipe_target, info.group_info), failure_record(exc))
                return
        await self._complete(info, values)

    async def _completion_done(self, info: GroupInfo) -> bool:
        try:
            await self.backend.fetch(_group_key(info.id, "done"), 0)
        except ResultTimeout:
            return False
        return True

    async def _member_values(self, info: GroupInfo) -> list[Any]:
        values = []
        for rid in info.ids:
            record = await self.backend.fetch(rid, _MEMBER_RESULT_TIMEOUT)
            record.raise_for_failure()
            values.append(record.value)
        return values

    async def _complete(self, info: GroupInfo, values: list[Any]) -> None:
        if info.store:
            await self.backend.store(info.id, ResultRecord(ok=True, value=values), info.ttl)
        for callback in info.callbacks:
            await self.launch(callback)
        await self.succeed(Tail(info.pipe_target, info.group_info), values, info.id)

    # -- failure --------------------------------------------------------------

    async def fail(self, tail: Tail, record: ResultRecord) -> None:
        """Store ``record`` as the result of everything that will now never run."""
        if self.broker.results is None:
            return
        if tail.pipe_target is not None:
            node = tail.pipe_target
            await self.backend.store(node.result_id, record, self.ttl)
            await self.fail(Tail.of_node(node), record)
        elif tail.group_info is not None:
            info = tail.group_info
            await self.backend.store(info.id, record, info.ttl)
            await self.fail(Tail(info.pipe_target, info.group_info), record)


def _result_ttl(ctx: Context) -> float:
    for m in ctx.broker.middleware:
        if isinstance(m, Results):
            return m.ttl(ctx)
    return seconds(ctx.option("result_ttl", DEFAULT_RESULT_TTL))


class Composition(Middleware):
    """Send the next pipeline step and complete groups when a message finishes.

    Options (set by :func:`taskflow.pipeline` and :func:`taskflow.group`, not
    by hand): ``pipe_target``, ``group_info``; and ``pipe_ignore`` (bool), on
    a pipeline step that should not receive the previous step's result.
    """

    actor_options = frozenset({"pipe_target", "group_info", "pipe_ignore"})

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Run the rest of the stack, then go on with what follows the message."""
        options = ctx.message.options
        if "pipe_target" not in options and "group_info" not in options:
            return await call_next(ctx)
        tail = Tail.of_options(options)
        rerun = ctx.delivery.redelivered or ctx.message.retries > 0
        runner = Runner(ctx.broker, rerun=rerun, ttl=_result_ttl(ctx))
        try:
            value = await call_next(ctx)
        except Exception as exc:
            if ctx.outcome == "dead":
                await self._failed(ctx, runner, tail, exc)
            raise
        if ctx.outcome != "dead":
            try:
                await runner.succeed(tail, value, ctx.message.id)
                await runner.flush()
            except Exception as exc:
                await follow_up_failed(ctx, exc, "the next step of its pipeline or group")
                raise
        return value

    async def _failed(self, ctx: Context, runner: Runner, tail: Tail, exc: Exception) -> None:
        try:
            await runner.fail(tail, failure_record(exc))
        except Exception:
            logger.exception(
                "message %s failed; could not mark the rest of its pipeline or group failed",
                ctx.message.id,
            )
