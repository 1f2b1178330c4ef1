"""Result backends: where ``store_results=True`` actors keep their return values.

A backend stores one encoded :class:`ResultRecord` per message id for a TTL,
and waits for one to appear. Failures are stored as text (type name, message,
traceback); no exception object is ever imported or unpickled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import msgspec

from taskflow.errors import ResultFailed, ResultTimeout

if TYPE_CHECKING:
    from taskflow.broker import Broker
    from taskflow.message import Message


class ResultRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A stored outcome: the value, or the failure described as text."""

    ok: bool
    value: Any = None
    error_type: str = ""
    error: str = ""
    traceback: str = ""


_record_decoder = msgspec.json.Decoder(ResultRecord)
_record_encoder = msgspec.json.Encoder()


class ResultBackend(ABC):
    """Base class of result backends; subclasses implement ``_put`` and ``_get``."""

    _broker: Broker | None = None

    async def connect(self, broker: Broker) -> None:
        """Open connections; called when the broker connects."""
        self._broker = broker

    async def close(self) -> None:  # noqa: B027 - most backends have nothing to close
        """Close connections; called when the broker closes."""

    async def store(self, message_id: str, record: ResultRecord, ttl: float) -> None:
        """Keep ``record`` under ``message_id`` for ``ttl`` seconds (idempotent)."""
        await self._put(message_id, _record_encoder.encode(record), ttl)

    async def fetch(self, message_id: str, timeout: float | None) -> ResultRecord:
        """Wait up to ``timeout`` seconds for the record of ``message_id``.

        Raises:
            ResultTimeout: Nothing was stored in time.
        """
        data = await self._get(message_id, timeout)
        if data is None:
            raise ResultTimeout(f"no result for message {message_id} within {timeout} s")
        return _record_decoder.decode(data)

    async def wait(self, message: Message[Any], *, timeout: float | None) -> Any:
        """Return ``message``'s value converted to its actor's return annotation.

        Raises:
            ResultFailed: The actor failed for good.
            ResultTimeout: Nothing was stored in time.
        """
        record = await self.fetch(message.id, timeout)
        if not record.ok:
            raise ResultFailed(record.error_type, record.error, record.traceback)
        actor = self._broker.get_actor(message.actor) if self._broker else None
        if actor is None or actor.params.return_type is Any:
            return record.value
        return msgspec.convert(record.value, actor.params.return_type, strict=False)

    @abstractmethod
    async def _put(self, key: str, data: bytes, ttl: float) -> None:
        """Store ``data`` under ``key`` for ``ttl`` seconds."""

    @abstractmethod
    async def _get(self, key: str, timeout: float | None) -> bytes | None:
        """Return the data under ``key``, waiting up to ``timeout`` seconds for it."""


def __getattr__(name: str) -> Any:
    # Backends load lazily so that importing this package needs no driver.
    if name == "MemoryResults":
        from taskflow.results.memory import MemoryResults

        return MemoryResults
    raise AttributeError(name)
