"""Messages and their wire codecs.

A message is one frozen msgspec Struct. JSON is the default wire format
(readable in ``redis-cli`` and RabbitMQ's UI); MessagePack is a broker option.
Encoders and decoders are built once per codec, never per message.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import msgspec

from taskflow import _sync
from taskflow._ids import new_id
from taskflow._time import utcnow
from taskflow.errors import DecodeError, ResultsNotConfigured

if TYPE_CHECKING:
    from taskflow.broker import Broker

__all__ = ["WIRE_VERSION", "Codec", "Message", "utcnow"]  # utcnow: re-exported for old imports

R = TypeVar("R")

#: Version of the wire format written by this release.
WIRE_VERSION = 1


class Message(msgspec.Struct, Generic[R], frozen=True, kw_only=True, dict=True):
    """One request to run an actor, as it travels through the broker.

    Attributes:
        id: Sortable, time-ordered id.
        queue: The queue the message is sent to.
        actor: The actor's name.
        args: Positional arguments.
        kwargs: Keyword arguments.
        options: Per-message option overrides (validated against the actor's options).
        enqueued_at: When the message was first sent.
        eta: When the message becomes ready, if it was delayed.
        priority: Higher runs first within a queue.
        retries: How many times this message was retried after a failure.
        v: Wire format version.
    """

    id: str = msgspec.field(default_factory=new_id)
    queue: str
    actor: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    enqueued_at: dt.datetime = msgspec.field(default_factory=utcnow)
    eta: dt.datetime | None = None
    priority: int = 0
    retries: int = 0
    v: int = WIRE_VERSION

    def bind(self, broker: Broker) -> Message[R]:
        """Attach the broker this message belongs to (not part of the wire format)."""
        self.__dict__["_broker"] = broker
        return self

    async def result(self, *, timeout: float | dt.timedelta | None = 10.0) -> R:
        """Wait for the actor's return value.

        Raises:
            ResultFailed: The actor failed for good.
            ResultTimeout: No result within ``timeout`` seconds.
            ResultsNotConfigured: The broker was built without ``results=``.
        """
        broker: Broker | None = self.__dict__.get("_broker")
        if broker is None:
            raise ResultsNotConfigured("this message is not bound to a broker")
        value: R = await broker.get_result(self, timeout=timeout)
        return value

    async def cancel(self) -> None:
        """Cancel this message (see :meth:`taskflow.Broker.cancel`).

        Raises:
            RuntimeError: The message is not bound to a broker.
        """
        broker: Broker | None = self.__dict__.get("_broker")
        if broker is None:
            raise RuntimeError("this message is not bound to a broker")
        await broker.cancel(self.id)

    def cancel_sync(self) -> None:
        """:meth:`cancel` for code without an event loop."""
        broker: Broker | None = self.__dict__.get("_broker")
        if broker is None:
            raise RuntimeError("this message is not bound to a broker")
        broker.cancel_sync(self.id)

    def result_sync(self, *, timeout: float | dt.timedelta | None = 10.0) -> R:
        """:meth:`result` for code without an event loop: blocks this thread until it comes.

        Raises:
            ResultFailed: The actor failed for good.
            ResultTimeout: No result within ``timeout`` seconds.
            ResultsNotConfigured: The broker was built without ``results=``.
            RuntimeError: Called from a thread whose event loop is running:
                ``await message.result(...)`` there instead.
        """
        broker: Broker | None = self.__dict__.get("_broker")
        _sync.refuse_in_running_loop("message.result_sync()", "await message.result(...)")
        if broker is None:
            raise ResultsNotConfigured("this message is not bound to a broker")
        return _sync.run(
            broker,
            lambda: self.result(timeout=timeout),
            sync_form="message.result_sync()",
            await_form="await message.result(...)",
        )


class Codec:
    """Encodes and decodes messages; one instance per broker, built once."""

    name: str

    def __init__(self, fmt: Literal["json", "msgpack"] = "json") -> None:
        self.name = fmt
        if fmt == "json":
            self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder = msgspec.json.Encoder()
            self._decoder: (
                msgspec.json.Decoder[Message[Any]] | msgspec.msgpack.Decoder[Message[Any]]
            ) = msgspec.json.Decoder(Message)
            self._any_decoder: Any = msgspec.json.Decoder()
        elif fmt == "msgpack":
            self._encoder = msgspec.msgpack.Encoder()
            self._decoder = msgspec.msgpack.Decoder(Message)
            self._any_decoder = msgspec.msgpack.Decoder()
        else:
            raise ValueError(f"unknown codec {fmt!r}: use 'json' or 'msgpack'")

    def encode(self, message: Message[Any]) -> bytes:
        """Encode a message to bytes."""
        return self._encoder.encode(message)

    def encode_value(self, value: Any) -> bytes:
        """Encode any msgspec-supported value (results, stored records)."""
        return self._encoder.encode(value)

    def decode_value(self, data: bytes) -> Any:
        """Decode bytes written by :meth:`encode_value` into plain values."""
        return self._any_decoder.decode(data)

    def decode(self, data: bytes) -> Message[Any]:
        """Decode bytes into a message.

        Raises:
            DecodeError: The bytes are not a valid message; the error keeps them.
        """
        try:
            return self._decoder.decode(data)
        except (msgspec.DecodeError, RecursionError, ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"decode_error: {exc}"[:500], data) from exc
