"""Redis clients with timeouts on every call, and reconnect bookkeeping."""

from __future__ import annotations

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
    if isinstance(exc, redis.ResponseError) and str(exc).startswith(("LOADING", "BUSY")):
        return True
    return isinstance(exc, TRANSIENT)


def is_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` is Redis refusing a write at ``maxmemory`` (policy ``noeviction``)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.ResponseError) and "OOM command not allowed" in str(exc)
    )


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` may pass by itself: the server unreachable, not ready, or full."""
    return is_transient(exc) or is_full(exc)


def outage_kind(exc: BaseException) -> str:
    """The kind of outage ``exc`` means (see ``taskflow._retrying.Outage``): full, or connection."""
    return "full" if is_full(exc) else "connection"


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


def async_client(
    url: str,
    options: dict[str, Any],
    *,
    max_connections: int | None = None,
    wait: float | None = None,
) -> redis.asyncio.Redis:
    """An asyncio client that never retries by itself (the caller decides what is safe to repeat).

    With ``max_connections``, the pool is bounded and a caller beyond it waits
    up to ``wait`` seconds for a free connection instead of opening another
    (or failing at once, as redis-py's plain pool does when bounded).
    """
    retry = AsyncRetry(NoBackoff(), 0)
    if max_connections is None:
        return redis.asyncio.Redis.from_url(url, retry=retry, **options)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=wait, retry=retry, **options
    )
    return redis.asyncio.Redis.from_pool(pool)


def sync_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """A blocking client, for the heartbeat thread."""
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
