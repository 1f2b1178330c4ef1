"""Redis clients with timeouts on every call, and reconnect bookkeeping."""

from __future__ import annotations

import logging
import random
import time
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

#: Errors after which a call may be repeated once the server is back.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    OSError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the server is unreachable or not ready", not "the call is wrong"."""
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return False
    if isinstance(exc, redis.ResponseError) and str(exc).startswith("LOADING"):
        return True
    return isinstance(exc, TRANSIENT)


def client_options(
    url: str, *, socket_timeout: float, connect_timeout: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """Options for redis-py clients: timeouts always, TLS verification for ``rediss://``."""
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": 0,
    }
    if urlsplit(url).scheme == "rediss":
        # Verification is on by default in redis-py, but defaults have moved
        # between releases; say it explicitly.
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
    options.update(extra)
    options["decode_responses"] = False  # the broker reads bytes
    return options


def async_client(url: str, options: dict[str, Any]) -> redis.asyncio.Redis:
    """An asyncio client that never retries by itself (the broker decides what is safe to repeat)."""
    return redis.asyncio.Redis.from_url(url, retry=AsyncRetry(NoBackoff(), 0), **options)


def sync_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """A blocking client, for the heartbeat thread."""
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)


def backoff(attempt: int, *, base: float = 0.05, cap: float = 1.0) -> float:
    """Exponential backoff with full jitter for the ``attempt``-th retry (0-based)."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2.0 ** min(attempt, 16))


class Outage:
    """Logs a lost connection once per outage, and its end.

    Args:
        logger: Where to log.
        what: Who lost the connection, for the log line (``"consumer of q"``).
        where: The masked server URL.
    """

    def __init__(self, logger: logging.Logger, what: str, where: str) -> None:
        self.logger = logger
        self.what = what
        self.where = where
        self.since: float | None = None
        self.attempts = 0
        self.count = 0

    def failed(self, exc: BaseException) -> float:
        """Record a failed attempt; return how long to wait before the next one."""
        if self.since is None:
            self.since = time.monotonic()
            self.count += 1
            self.logger.warning(
                "%s lost the connection to Redis at %s (%s: %s); reconnecting",
                self.what,
                self.where,
                type(exc).__name__,
                exc,
            )
        delay = backoff(self.attempts)
        self.attempts += 1
        return delay

    def recovered(self) -> None:
        """Record a successful call; log the end of an outage if there was one."""
        if self.since is not None:
            self.logger.info(
                "%s reconnected to Redis at %s after %.1f s",
                self.what,
                self.where,
                time.monotonic() - self.since,
            )
            self.since = None
            self.attempts = 0
