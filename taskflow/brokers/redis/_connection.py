"""Redis clients with timeouts on every call, and reconnect bookkeeping.

Three kinds of deployment, told apart by the URL (:func:`parse_target`):

* one server: ``redis://host:port/db`` (``rediss://`` for TLS);
* Redis Cluster: ``redis+cluster://h1:p1,h2:p2/0`` (or ``cluster=True`` with a
  ``redis://`` seed URL), on redis-py's ``RedisCluster`` clients, which follow
  ``MOVED``/``ASK`` redirections and find a promoted replica by themselves;
* Sentinel: ``redis+sentinel://s1:26379,s2:26379/mymaster/0``, on clients
  from redis-py's ``Sentinel.master_for``, which ask the sentinels for the
  current master on every new connection, and drop a connection whose server
  answers ``READONLY`` (a demoted master).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry


class NotReplicated(redis.RedisError):
    """``WAIT`` counted fewer replicas holding a write than the broker asks for."""


#: Errors after which a call may be repeated once the server is back.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    NotReplicated,
    OSError,
)

#: Replies of a server that refuses writes for a while: loading, busy, or
#: under ``min-replicas-to-write`` with too few replicas (a failover under way).
_PASSING = ("LOADING", "BUSY", "NOREPLICAS", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the server is unreachable or not ready", not "the call is wrong"."""
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return False
    if isinstance(exc, redis.ResponseError) and str(exc).startswith(_PASSING):
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


@dataclass(frozen=True)
class Target:
    """Where a broker's Redis is: one server, a Cluster, or a Sentinel-watched master.

    Attributes:
        kind: ``"single"``, ``"cluster"`` or ``"sentinel"``.
        url: A plain ``redis://``/``rediss://`` URL of the first node (TLS and
            credentials read from it).
        nodes: ``(host, port)`` of every node named: seed nodes of a Cluster,
            the sentinels of a Sentinel deployment.
        service: The Sentinel master's name (empty otherwise).
        db: The database number (always 0 on a Cluster).
    """

    kind: str
    url: str
    nodes: tuple[tuple[str, int], ...]
    service: str = ""
    db: int = 0

    @property
    def tls(self) -> bool:
        """Whether the URL asks for TLS."""
        return urlsplit(self.url).scheme == "rediss"

    def credentials(self) -> dict[str, Any]:
        """``username`` and ``password`` from the URL, where given."""
        parts = urlsplit(self.url)
        out: dict[str, Any] = {}
        if parts.username:
            out["username"] = unquote(parts.username)
        if parts.password:
            out["password"] = unquote(parts.password)
        return out


def _nodes(hosts: str, default_port: int, url: str) -> tuple[tuple[str, int], ...]:
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, str(default_port)
        if not host or not port.isdigit():
            raise ValueError(f"bad host:port {item!r} in Redis URL {url!r}")
        nodes.append((host.strip("[]"), int(port)))
    return tuple(nodes)


def _db(text: str, url: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"bad database number {text!r} in Redis URL {url!r}")
    return int(text)


def parse_target(url: str, *, cluster: bool = False) -> Target:
    """Read ``redis://``, ``rediss://``, ``redis+cluster://`` or ``redis+sentinel://`` URLs.

    Raises:
        ValueError: The URL is malformed, or names a database other than 0 on a Cluster.
    """
    parts = urlsplit(url)
    base, _, mode = parts.scheme.partition("+")
    if base not in ("redis", "rediss") or mode not in ("", "cluster", "sentinel"):
        raise ValueError(
            f"unknown Redis URL scheme {parts.scheme!r}: use redis://, rediss://, "
            "redis+cluster:// or redis+sentinel://"
        )
    creds, _, hosts = parts.netloc.rpartition("@")
    prefix = f"{creds}@" if creds else ""
    path = parts.path.strip("/")
    if mode == "sentinel":
        service, _, db_text = path.partition("/")
        if not service:
            raise ValueError(f"no master name in Sentinel URL {url!r}: .../mymaster/0")
        nodes = _nodes(hosts, 26379, url)
        first = f"{base}://{prefix}{nodes[0][0]}:{nodes[0][1]}/"
        return Target("sentinel", first, nodes, service, _db(db_text, url))
    nodes = _nodes(hosts or "127.0.0.1:6379", 6379, url)
    db = _db(path, url)
    first = f"{base}://{prefix}{nodes[0][0]}:{nodes[0][1]}/{db}"
    if mode == "cluster" or cluster:
        if db != 0:
            raise ValueError(f"Redis Cluster has database 0 only, not {db} ({url!r})")
        return Target("cluster", first, nodes)
    if len(nodes) > 1:
        raise ValueError(f"several hosts in {url!r}: use redis+cluster:// or redis+sentinel://")
    return Target("single", url, nodes, db=db)


def _node_options(target: Target, options: dict[str, Any]) -> dict[str, Any]:
    """Options for clients built from parts (Cluster, Sentinel) rather than from a URL."""
    out = {**target.credentials(), **options}
    out.pop("sentinel_kwargs", None)
    if target.tls:
        out["ssl"] = True
    return out


def async_target_client(
    target: Target,
    options: dict[str, Any],
    *,
    max_connections: int | None = None,
    wait: float | None = None,
) -> Any:
    """An asyncio client for ``target`` (a ``Redis``, or a ``RedisCluster`` on a Cluster)."""
    if target.kind == "single":
        return async_client(target.url, options, max_connections=max_connections, wait=wait)
    kwargs = _node_options(target, options)
    if target.kind == "cluster":
        nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in target.nodes]
        if max_connections is not None:
            kwargs["max_connections"] = max_connections
        return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **kwargs)
    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes), sentinel_kwargs=_sentinel_kwargs(options)
    )
    return sentinel.master_for(
        target.service,
        redis_class=_AsyncSentinelMaster,
        db=target.db,
        retry=AsyncRetry(NoBackoff(), 0),
        **kwargs,
    )


def sync_target_client(target: Target, options: dict[str, Any]) -> Any:
    """A blocking client for ``target``, for the heartbeat thread."""
    if target.kind == "single":
        return sync_client(target.url, options)
    kwargs = _node_options(target, options)
    if target.kind == "cluster":
        nodes = [
            redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
            for h, p in target.nodes
        ]
        return redis.cluster.RedisCluster(startup_nodes=nodes, **kwargs)
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes), sentinel_kwargs=_sentinel_kwargs(options)
    )
    return sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service,
        redis_class=_SentinelMaster,
        db=target.db,
        retry=Retry(NoBackoff(), 0),
        **kwargs,
    )


class _AsyncSentinelMaster(redis.asyncio.Redis):
    """A ``master_for`` client that also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the master's pool, then the sentinels' clients."""
        await super().aclose(close_connection_pool)
        for sentinel in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            await sentinel.aclose()


class _SentinelMaster(redis.Redis):
    """The blocking ``master_for`` client, closing its sentinels' clients too."""

    def close(self) -> None:
        """Close the master's pool, then the sentinels' clients."""
        super().close()
        for sentinel in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            sentinel.close()


def _sentinel_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    keep = ("socket_timeout", "socket_connect_timeout", "socket_keepalive")
    out = {k: options[k] for k in keep if k in options}
    out.update(options.get("sentinel_kwargs") or {})
    return out
