"""The composition engine: pipelines and group completion, driven by what each message carries.

:func:`taskflow.pipeline` and :func:`taskflow.group` compile a composition
into *nodes* (a message, or a group of nodes) and store what comes after a
node in the options of the message that ends it:

* ``pipe_target``: the next pipeline step, a node. When the message
  succeeds, the node is sent with the result appended to its positional
  arguments (to every member's first step if it is a group), unless its
  message has ``pipe_ignore=True``.
* ``group_ref``: the group this message ends a member of (:class:`GroupRef`):
  the group's id, the member's position and the group's size, a few bytes
  whatever the group's size. What the group is (:class:`GroupInfo`: the result
  ids of its members in order, its completion callbacks and what comes after
  the group itself) is stored once, in the result backend, when the group is
  sent; so a group of N members costs O(N) bytes, not O(N²).

When a member succeeds, its id is added to a set kept by the result backend
(``add``), which counts distinct members: a member that runs again after a
crash is not counted twice, and the count lives on the server, not in any
worker. The member that brings the count to the group's size claims the
completion with an atomic counter (``incr``), records itself as the claimer,
and sends the callbacks and the next step. Only the claimer's own message
completes the group again: if its worker dies after claiming and before
sending, or the send fails (retried, or dead-lettered and requeued), that
message runs again, finds the completion claimed by itself but not marked
done, and sends it then. Any other member that runs again leaves it alone.
A completion therefore runs once and is never dropped; only the claimer
dying between sending and marking done (a few milliseconds) makes it run
twice.

A member's result is kept as long as its group's counters (``GROUP_TTL``),
whatever the member's own ``result_ttl``: the group may complete long after
it ran. A member that runs again and fails never overwrites the success it
stored before, and does not fail its group.

A message that fails for good stops what comes after it: the failure is
stored as the result of every later step and of the enclosing groups, so
``pipeline.result()`` and ``group.results()`` raise
:class:`taskflow.ResultFailed` at once instead of timing out. A group whose
member failed never completes and its callbacks never run.

:mod:`taskflow.composition` builds the nodes (the public ``group`` and
``pipeline``) and :class:`Runner` launches them;
:class:`taskflow.middleware.Composition` is the thin layer that calls
:meth:`Runner.succeed` or :meth:`Runner.fail` when a message finishes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from taskflow._time import utcnow
from taskflow.errors import ResultsNotConfigured, ResultTimeout
from taskflow.message import Message
from taskflow.results import DEFAULT_RESULT_TTL, ResultBackend, ResultRecord, failure_record

if TYPE_CHECKING:
    from taskflow.broker import Broker

#: Option keys the engine writes into messages; users may not set them.
INTERNAL_OPTIONS = frozenset({"pipe_target", "group_ref"})

logger = logging.getLogger("taskflow.composition")

#: Seconds the group counters are kept, counted from the last member's completion.
GROUP_TTL = 7 * 24 * 3600.0
#: Messages sent in one batch when a composition launches many.
SEND_BATCH = 1000
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


class GroupRef(msgspec.Struct, frozen=True, kw_only=True):
    """What the last message of each group member carries of its group.

    Attributes:
        id: The group's id.
        index: The member's position in the group.
        size: How many members the group has.
        ttl: Seconds the group's counters, description and member results are kept.
    """

    id: str
    index: int
    size: int
    ttl: float = GROUP_TTL


class GroupInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a group is; stored once in the result backend when the group is sent.

    Attributes:
        id: The group's id; its result is stored under it when ``store`` is set.
        ids: The result ids of the members, in the group's order.
        callbacks: Nodes sent once when every member succeeded.
        store: Whether to store the list of member results under ``id``
            (for groups inside a pipeline or another group).
        pipe_target: The next pipeline step after the group, which receives
            the list of results.
        group_ref: The enclosing group, if this group is a member of one.
        ttl: Seconds the group's counters and stored result are kept.
    """

    id: str
    ids: list[str]
    callbacks: list[Node] = []
    store: bool = False
    pipe_target: Node | None = None
    group_ref: GroupRef | None = None
    ttl: float = GROUP_TTL

    def ref(self, index: int) -> GroupRef:
        """What the member at ``index`` carries of this group."""
        return GroupRef(id=self.id, index=index, size=len(self.ids), ttl=self.ttl)


class Tail(msgspec.Struct, frozen=True):
    """What comes after a node: the next pipeline step, or the group it ends a member of."""

    pipe_target: Node | None = None
    group_ref: GroupRef | None = None

    @classmethod
    def of_options(cls, options: dict[str, Any]) -> Tail:
        """Read the tail from a message's options."""
        return msgspec.convert(
            {"pipe_target": options.get("pipe_target"), "group_ref": options.get("group_ref")},
            cls,
        )

    @classmethod
    def of_node(cls, node: Node) -> Tail:
        """The tail of ``node``: in its message's options, or in its group's info."""
        if isinstance(node, MessageNode):
            return cls.of_options(node.message.get("options") or {})
        return cls(node.info.pipe_target, node.info.group_ref)

    def __bool__(self) -> bool:
        return self.pipe_target is not None or self.group_ref is not None


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
        await self._send()
        done, self._done = self._done, []
        for key, ttl in done:
            await self.backend.store(key, ResultRecord(ok=True), ttl)

    # -- sending --------------------------------------------------------------

    async def _send(self) -> None:
        out, self.out = self.out, []
        await self.broker.enqueue(out)

    async def launch(self, node: Node, extra: tuple[Any, ...] = ()) -> None:
        """Send ``node``, with ``extra`` appended to the arguments of its first messages."""
        if isinstance(node, MessageNode):
            message: Message[Any] = msgspec.convert(node.message, Message)
            if extra and not message.options.get("pipe_ignore"):
                message = msgspec.structs.replace(message, args=(*message.args, *extra))
            message = msgspec.structs.replace(message, enqueued_at=utcnow())
            self.out.append(message.bind(self.broker))
            if len(self.out) >= SEND_BATCH:
                await self._send()  # a big group goes out in batches, in bounded memory
            return
        if not node.members:
            await self._complete(node.info, [])
            return
        if node.info.ids:  # a group that is counted: its members find it in the backend
            await self.backend.store(
                _group_key(node.info.id, "info"),
                ResultRecord(ok=True, value=msgspec.to_builtins(node.info)),
                node.info.ttl,
            )
        for member in node.members:
            await self.launch(member, extra)

    # -- success --------------------------------------------------------------

    async def succeed(self, tail: Tail, value: Any, member_id: str) -> None:
        """Go on after ``member_id`` (a message or a group) succeeded with ``value``."""
        if tail.pipe_target is not None:
            await self.launch(tail.pipe_target, (value,))
        elif tail.group_ref is not None:
            await self._member_done(tail.group_ref, member_id)

    async def _member_done(self, ref: GroupRef, member_id: str) -> None:
        backend = self.backend
        finished = await backend.add(_group_key(ref.id, "members"), member_id, ref.ttl)
        if finished < ref.size:
            return
        claim = await backend.incr(_group_key(ref.id, "claim"), ref.ttl)
        if claim == 1:
            claimer = ResultRecord(ok=True, value=member_id)
            await backend.store(_group_key(ref.id, "claimer"), claimer, ref.ttl)
        elif not await self._completes_again(ref, member_id):
            return
        info = await self.info(ref)
        self._done.append((_group_key(info.id, "done"), info.ttl))
        values: list[Any] = []
        if info.store or info.pipe_target is not None:
            try:
                values = await self._member_values(info)
            except Exception as exc:
                await self.fail(Tail(info.pipe_target, info.group_ref), failure_record(exc))
                return
        await self._complete(info, values)

    async def _completes_again(self, ref: GroupRef, member_id: str) -> bool:
        """Whether this run of a member counted before completes the group claimed before.

        Only a run of the claimer's own message does, and only while the
        completion is not marked done: its earlier run died, or failed to
        send. A run of any other member leaves the completion to the claimer.
        """
        if await self._recorded(_group_key(ref.id, "done")) is not None:
            return False
        claimer = await self._recorded(_group_key(ref.id, "claimer"))
        if claimer is None:
            # The claimer died between its claim and recording itself: a
            # redelivered member takes over.
            mine = self.rerun
        else:
            mine = claimer == member_id
        if mine:
            logger.warning("group %s: completing it again (its claimer did not finish)", ref.id)
        return mine

    async def _recorded(self, key: str) -> Any:
        """The value stored under ``key``, or ``None`` when nothing is."""
        try:
            record = await self.backend.fetch(key, 0)
        except ResultTimeout:
            return None
        return record.value if record.value is not None else True

    async def info(self, ref: GroupRef) -> GroupInfo:
        """What the group ``ref`` points to is, as stored when it was sent.

        Raises:
            ResultTimeout: It is not stored (any more): the group's TTL passed.
        """
        record = await self.backend.fetch(_group_key(ref.id, "info"), _MEMBER_RESULT_TIMEOUT)
        return msgspec.convert(record.value, GroupInfo)

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
        await self.succeed(Tail(info.pipe_target, info.group_ref), values, info.id)

    # -- failure --------------------------------------------------------------

    async def fail(self, tail: Tail, record: ResultRecord) -> None:
        """Store ``record`` as the result of everything that will now never run."""
        if self.broker.results is None:
            return
        if tail.pipe_target is not None:
            node = tail.pipe_target
            await self.backend.store(node.result_id, record, self.ttl)
            await self.fail(Tail.of_node(node), record)
        elif tail.group_ref is not None:
            ref = tail.group_ref
            await self.backend.store(ref.id, record, ref.ttl)
            try:
                info = await self.info(ref)
            except ResultTimeout:
                return
            await self.fail(Tail(info.pipe_target, info.group_ref), record)
