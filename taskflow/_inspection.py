"""Inspection: what a queue holds, where one message is, which workers run.

The hub's :meth:`taskflow.Broker.browse`, :meth:`~taskflow.Broker.get_message`
and :meth:`~taskflow.Broker.workers` return the public types of this module;
transports answer the ``_browse``, ``_locate`` and worker registry hooks of
:class:`taskflow._transport.Transport` with :class:`BrowseRecord` and raw
worker records.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from typing import Any, Literal, NamedTuple

import msgspec

from taskflow.message import Message

__all__ = ["STATES", "BrowseRecord", "MessageInfo", "State", "WorkerInfo", "WorkerRecord"]

State = Literal["ready", "delayed", "in_flight", "dead"]
#: Every state :meth:`taskflow.Broker.browse` accepts, in the order messages move.
STATES: tuple[State, ...] = ("ready", "delayed", "in_flight", "dead")


class BrowseRecord(NamedTuple):
    """One stored message as a transport's ``_browse`` or ``_locate`` returns it.

    Times are unix seconds; fields that do not apply to the state are ``None``.
    """

    id: str
    body: bytes
    state: State
    eta: float | None = None
    delivery_count: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    reason: str | None = None
    dead_at: float | None = None


class MessageInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One message as the broker holds it, for inspection.

    Attributes:
        id: The message id.
        queue: The queue holding it.
        message: The decoded message (``None`` when its bytes do not decode).
        body: The stored bytes.
        state: ``ready``, ``delayed``, ``in_flight`` or ``dead``.
        eta: When a delayed message becomes ready.
        delivery_count: Deliveries so far, by the server's count.
        lease_owner: The consumer holding an in-flight message.
        lease_expires_at: When its lease runs out (``None`` where the server has none).
        reason: Why a dead letter died.
        dead_at: When it died.
    """

    id: str
    queue: str
    message: Message[Any] | None
    body: bytes
    state: State
    eta: dt.datetime | None = None
    delivery_count: int = 0
    lease_owner: str | None = None
    lease_expires_at: dt.datetime | None = None
    reason: str | None = None
    dead_at: dt.datetime | None = None


class WorkerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker writes to the broker's registry at each heartbeat (unix times)."""

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: float
    last_heartbeat: float
    in_progress: int
    processed: int


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A live worker, as registered with its broker.

    Attributes:
        id: The worker's id (``Worker.worker_id``).
        host: Host name of its machine.
        pid: Its process id.
        queues: The queues it consumes.
        concurrency: Most messages it runs at once.
        started_at: When it started.
        last_heartbeat: Its latest heartbeat.
        in_progress: Messages it was running at that heartbeat.
        processed: Messages it had acked as done by then.
    """

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: dt.datetime
    last_heartbeat: dt.datetime
    in_progress: int
    processed: int


def when(seconds: float | None) -> dt.datetime | None:
    """Unix seconds as an aware UTC datetime (``None`` stays ``None``)."""
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)


def worker_info(record: WorkerRecord) -> WorkerInfo:
    """The public view of a registry record."""
    started, beat = when(record.started_at), when(record.last_heartbeat)
    assert started is not None and beat is not None
    return WorkerInfo(
        id=record.id,
        host=record.host,
        pid=record.pid,
        queues=list(record.queues),
        concurrency=record.concurrency,
        started_at=started,
        last_heartbeat=beat,
        in_progress=record.in_progress,
        processed=record.processed,
    )


def local_identity() -> tuple[str, int]:
    """This process's host name and pid."""
    return socket.gethostname(), os.getpid()


encode_record = msgspec.json.Encoder().encode
decode_record = msgspec.json.Decoder(WorkerRecord).decode
