"""Result backends: where ``store_results=True`` actors keep their return values.

A backend stores one encoded :class:`ResultRecord` per message id for a TTL,
and waits for one to appear. Failures are stored as text (type name, message,
traceback); no exception object is ever imported or unpickled.

Besides records, a backend keeps two small server-side primitives that
composition needs across processes: an atomic counter (:meth:`ResultBackend.incr`)
and a set that counts distinct members (:meth:`ResultBackend.add`), so that a
member redelivered after a crash is not counted twice.

Backends: :class:`MemoryResults` (one process), :class:`SQLiteResults` (one
host, same file as the ``SQLiteBroker`` by default) and :class:`RedisResults`
(usable with any broker).
"""

from __future__ import annotations

import logging
import traceback
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import msgspec

from taskflow._redact import redact
from taskflow.errors import ResultFailed, ResultTimeout

if TYPE_CHECKING:
    from taskflow.broker import Broker
    from taskflow.brokers.sqlite._results import SQLiteResults
    from taskflow.results.memory import MemoryResults
    from taskflow.results.redis import RedisResults

logger = logging.getLogger("taskflow.results")

__all__ = [
    "MemoryResults",
    "RedisResults",
    "ResultBackend",
    "ResultRecord",
    "SQLiteResults",
    "failure_record",
]

_TRACEBACK_LIMIT = 8000

#: Seconds a stored result is kept unless ``result_ttl`` says otherwise.
DEFAULT_RESULT_TTL = 3600.0


class ResultRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A stored outcome: the value, or the failure described as text."""

    ok: bool
    value: Any = None
    error_type: str = ""
    error: str = ""
    traceback: str = ""

    def raise_for_failure(self) -> None:
        """Raise :class:`taskflow.ResultFailed` if this record is a failure."""
        if not self.ok:
            raise ResultFailed(self.error_type, self.error, self.traceback)


def failure_record(exc: BaseException) -> ResultRecord:
    """Describe ``exc`` as a failed :class:`ResultRecord` (type name, message, traceback text).

    Secrets in the message and the traceback are masked (see :mod:`taskflow._redact`).
    """
    text = redact("".join(traceback.format_exception(exc)))[-_TRACEBACK_LIMIT:]
    return ResultRecord(
        ok=False, error_type=type(exc).__name__, error=redact(str(exc)), traceback=text
    )


#: Seconds the failure of a message refused before it ran is kept (the default result TTL).
REFUSED_TTL = 3600.0

_REFUSED_TYPES = {
    "unknown_actor": "ActorNotFound",
    "invalid_arguments": "InvalidArguments",
    "too_large": "MessageTooLarge",
    "decode_error": "DecodeError",
    "delivery_limit_exceeded": "DeliveryLimitExceeded",
}


def refused_record(reason: str) -> ResultRecord:
    """The failure of a message dead-lettered before it ran, for whoever waits on its result.

    ``reason`` is the dead-letter reason (``kind: detail``); the kind names the error type.
    """
    kind = reason.split(":", 1)[0]
    error_type = _REFUSED_TYPES.get(kind, "DeadLettered")
    return ResultRecord(ok=False, error_type=error_type, error=redact(reason))


async def store_refusal(backend: ResultBackend | None, message_id: str, reason: str) -> None:
    """Store the failure of a message dead-lettered before it ran (unless a success is stored).

    So that ``await message.result()`` raises :class:`taskflow.ResultFailed`
    with the reason at once instead of waiting for its timeout. A backend
    that cannot be reached is logged, never raised: the message is in dead
    letters either way.
    """
    if backend is None:
        return
    try:
        if not await backend.succeeded(message_id):
            await backend.store(message_id, refused_record(reason), REFUSED_TTL)
    except Exception as exc:
        logger.warning("could not store the failure of message %s: %s", message_id, exc)


_record_decoder = msgspec.json.Decoder(ResultRecord)
_record_encoder = msgspec.json.Encoder()


class ResultBackend(ABC):
    """Base class of result backends.

    Subclasses implement ``_put``, ``_get``, ``_incr`` and ``_add``; every
    write is idempotent or atomic, so several workers may share one backend.
    """

    async def connect(self, broker: Broker) -> None:  # noqa: B027 - nothing to open here
        """Open connections; called when ``broker`` connects.

        A backend keeps no reference to the broker: converting a stored value
        to an actor's return type is the broker's job (``Broker.get_result``).
        """

    async def close(self) -> None:  # noqa: B027 - most backends have nothing to close
        """Close connections; called when the broker closes."""

    def _forget_connections(self) -> None:  # noqa: B027 - most backends hold none
        """Drop connections without closing them (see ``Broker._forget_connections``)."""

    async def store(self, message_id: str, record: ResultRecord, ttl: float) -> None:
        """Keep ``record`` under ``message_id`` for ``ttl`` seconds (idempotent)."""
        await self._put(message_id, _record_encoder.encode(record), ttl)

    async def fetch(self, message_id: str, timeout: float | None) -> ResultRecord:
        """Wait up to ``timeout`` seconds (``None``: forever, 0: don't wait) for a record.

        Raises:
            ResultTimeout: Nothing was stored in time.
        """
        data = await self._get(message_id, timeout)
        if data is None:
            raise ResultTimeout(f"no result for message {message_id} within {timeout} s")
        return _record_decoder.decode(data)

    async def succeeded(self, message_id: str) -> bool:
        """Whether a success is stored under ``message_id`` (False for a failure or nothing)."""
        try:
            record = await self.fetch(message_id, 0)
        except ResultTimeout:
            return False
        return record.ok

    async def incr(self, key: str, ttl: float) -> int:
        """Add one to the counter ``key`` atomically and return the new value.

        A missing or expired counter starts at 0; each call keeps it ``ttl``
        more seconds.
        """
        return await self._incr(key, ttl)

    async def add(self, key: str, member: str, ttl: float) -> int:
        """Add ``member`` to the set ``key`` atomically and return the set's size.

        Adding a member that is already there changes nothing, so a step
        that runs again after a crash is counted once. Each call keeps the
        set ``ttl`` more seconds.
        """
        return await self._add(key, member, ttl)

    async def claim(self, key: str, data: bytes, ttl: float) -> bytes | None:
        """Store ``data`` under ``key`` for ``ttl`` seconds unless a value is there.

        Atomic: of callers racing for a free key, one stores its data and
        gets ``None``; the others get that data. Read the key with ``_get``.

        Raises:
            NotImplementedError: The backend has no atomic claim.
        """
        return await self._claim(key, data, ttl)

    async def _claim(self, key: str, data: bytes, ttl: float) -> bytes | None:
        """Store ``data`` under ``key`` unless present; see :meth:`claim`."""
        raise NotImplementedError(f"{type(self).__name__} has no atomic claim")

    @abstractmethod
    async def _put(self, key: str, data: bytes, ttl: float) -> None:
        """Store ``data`` under ``key`` for ``ttl`` seconds, waking its waiters."""

    @abstractmethod
    async def _get(self, key: str, timeout: float | None) -> bytes | None:
        """Return the data under ``key``, waiting up to ``timeout`` seconds for it.

        ``None`` waits forever; ``0`` looks once without waiting.
        """

    @abstractmethod
    async def _incr(self, key: str, ttl: float) -> int:
        """Atomically increment the counter ``key``; see :meth:`incr`."""

    @abstractmethod
    async def _add(self, key: str, member: str, ttl: float) -> int:
        """Atomically add to the set ``key`` and return its size; see :meth:`add`."""


def __getattr__(name: str) -> Any:
    # Backends load lazily so that importing this package needs no driver.
    if name == "MemoryResults":
        from taskflow.results.memory import MemoryResults

        return MemoryResults
    if name == "SQLiteResults":
        from taskflow.brokers.sqlite._results import SQLiteResults

        return SQLiteResults
    if name == "RedisResults":
        from taskflow.results.redis import RedisResults

        return RedisResults
    raise AttributeError(name)
