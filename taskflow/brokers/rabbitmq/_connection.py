"""One robust AMQP connection, and running an operation on a channel through reconnections.

aio-pika's robust connection reconnects by itself (jittered interval) and
restores its channels; :meth:`Link.call` runs an operation on a robust
channel's current AMQP channel, waiting out a reconnection for up to the
broker's ``send_timeout``. Errors are sorted in two kinds: *fatal* ones are
the server refusing the operation (it would refuse it again), *transient*
ones are a channel or connection going away under it.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import aio_pika
import anyio
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ChannelLockedResource,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
)

from taskflow._retrying import GaveUp, Outage, retrying
from taskflow._urls import mask_url
from taskflow.errors import BrokerError, BrokerUnavailable

if TYPE_CHECKING:
    import ssl

    import aiormq
    from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

T = TypeVar("T")

logger = logging.getLogger("taskflow.brokers.rabbitmq")

FATAL = (
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ChannelLockedResource,
)
# aio-pika raises RuntimeError for a connection that is being restored.
TRANSIENT = (ChannelInvalidStateError, AMQPError, ConnectionError, OSError, RuntimeError)


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` may pass by itself (a channel or connection going away)."""
    return isinstance(exc, TRANSIENT) and not isinstance(exc, (*FATAL, DeliveryError))


def loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine (plain AMQP to it is not worth a warning)."""
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_version(text: Any) -> tuple[int, ...]:
    """``(3, 12, 1)`` from a server's ``version`` property (``b"3.12.1"``)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    parts = []
    for piece in str(text).split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


class Link:
    """One aio-pika robust connection to RabbitMQ, with a channel for management calls.

    Losing the connection is logged once, and so is getting it back.

    Args:
        url: The ``amqp://`` / ``amqps://`` URL.
        name: The connection name RabbitMQ shows.
        timeout: Seconds a connection attempt or an operation may take,
            reconnection included.
        reconnect_interval: Seconds between reconnection attempts (jittered).
        ssl_context: For ``amqps://``.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        timeout: float,
        reconnect_interval: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.url = url
        self.name = name
        self.timeout = timeout
        self.reconnect_interval = reconnect_interval
        self.ssl_context = ssl_context
        self.server_version: tuple[int, ...] = ()
        self.on_reconnect: list[Callable[[], None]] = []
        self._connection: AbstractRobustConnection | None = None
        self._admin: AbstractRobustChannel | None = None
        self.outage = Outage(logger, f"connection {name!r}", mask_url(url), server="RabbitMQ")

    def describe(self, exc: BaseException) -> str:
        """``exc`` as one short line, without the URL's password."""
        text = f"{type(exc).__name__}: {exc}"
        password = urlsplit(self.url).password
        if password:
            text = text.replace(password, "***")
        return text[:300]

    @property
    def connection(self) -> AbstractRobustConnection:
        """The robust connection (open first)."""
        if self._connection is None:
            raise BrokerUnavailable("the RabbitMQ broker is not connected")
        return self._connection

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` succeeded and :meth:`close` was not called since."""
        return self._connection is not None

    async def open(self) -> None:
        """Connect.

        Raises:
            BrokerUnavailable: RabbitMQ could not be reached within ``timeout``.
        """
        parts = urlsplit(self.url)
        if parts.scheme == "amqp" and not loopback(parts.hostname):
            logger.warning(
                "connecting to RabbitMQ at %s without TLS: credentials and messages travel "
                "in clear text (use amqps://)",
                mask_url(self.url),
            )
        try:
            with anyio.fail_after(self.timeout):
                connection = await aio_pika.connect_robust(
                    self.url,
                    reconnect_interval=self.reconnect_interval * random.uniform(0.8, 1.2),
                    ssl_context=self.ssl_context,
                    client_properties={"connection_name": self.name},
                    timeout=self.timeout,
                )
        except (TimeoutError, *TRANSIENT) as exc:
            raise BrokerUnavailable(
                f"could not connect to RabbitMQ at {mask_url(self.url)}: {self.describe(exc)}"
            ) from None
        self._connection = connection
        transport = connection.transport
        if transport is not None:
            self.server_version = parse_version(
                transport.connection.server_properties.get("version", "")
            )
        connection.close_callbacks.add(self._on_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        self._admin = await connection.channel(publisher_confirms=False)

    async def channel(self, *, confirms: bool) -> AbstractRobustChannel:
        """A new robust channel (restored by aio-pika after a reconnection)."""
        return await self.connection.channel(publisher_confirms=confirms, on_return_raises=confirms)

    async def on_fresh_channel(
        self, op: Callable[[aiormq.abc.AbstractChannel], Awaitable[T]], what: str
    ) -> T:
        """Run ``op`` on a short-lived channel (its unacked messages return when it closes)."""

        async def run(admin: aiormq.abc.AbstractChannel) -> T:
            channel = await admin.connection.channel(publisher_confirms=False)
            try:
                return await op(channel)
            finally:
                if not channel.is_closed:
                    await channel.close()

        return await self.call(run, what)

    def _on_lost(self, _sender: Any, exc: BaseException | None = None) -> None:
        if self._connection is None or self._connection.close_called:
            return
        self.outage.failed(ConnectionError(self.describe(exc) if exc is not None else "closed"))

    def _on_reconnected(self, _sender: Any) -> None:
        for callback in self.on_reconnect:
            callback()
        self.outage.recovered()

    async def close(self) -> None:
        """Close the connection (bounded by ``timeout``, shielded from cancellation)."""
        connection, self._connection = self._connection, None
        self._admin = None
        if connection is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout):
                await connection.close()

    def forget(self) -> None:
        """Drop the connection without closing it (its event loop is gone)."""
        self._connection = self._admin = None

    async def call(
        self,
        op: Callable[[aiormq.abc.AbstractChannel], Awaitable[T]],
        what: str,
        channel: AbstractRobustChannel | None = None,
    ) -> T:
        """Run ``op`` on ``channel``'s current AMQP channel, riding out reconnections.

        ``channel`` defaults to the link's channel for management calls.

        Raises:
            BrokerError: RabbitMQ refused the operation.
            BrokerUnavailable: It did not succeed within ``timeout``.
        """
        channel = channel or self._admin
        if channel is None or self._connection is None:
            raise BrokerUnavailable("the RabbitMQ broker is closed")
        robust = channel

        async def attempt() -> T:
            await robust.ready()
            return await op(await robust.get_underlay_channel())

        try:
            return await retrying(
                attempt, transient=transient, outage=self.outage, timeout=self.timeout, what=what
            )
        except FATAL as exc:
            raise BrokerError(f"RabbitMQ refused to {what}: {self.describe(exc)}") from None
        except GaveUp as exc:
            last = f" ({self.describe(exc.last)})" if exc.last is not None else ""
            raise BrokerUnavailable(
                f"could not {what} within {self.timeout} s: RabbitMQ at "
                f"{mask_url(self.url)} is unreachable or blocked{last}"
            ) from None
