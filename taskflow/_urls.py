"""Building brokers from URLs, and keeping secrets out of logs."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from taskflow.broker import Broker

_SCHEMES = {
    "memory": ("taskflow.brokers.memory", "MemoryBroker", None),
    "sqlite": ("taskflow.brokers.sqlite", "SQLiteBroker", None),
    "redis": ("taskflow.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("taskflow.brokers.redis", "RedisBroker", "redis"),
    "redis+cluster": ("taskflow.brokers.redis", "RedisBroker", "redis"),
    "rediss+cluster": ("taskflow.brokers.redis", "RedisBroker", "redis"),
    "redis+sentinel": ("taskflow.brokers.redis", "RedisBroker", "redis"),
    "rediss+sentinel": ("taskflow.brokers.redis", "RedisBroker", "redis"),
    "amqp": ("taskflow.brokers.rabbitmq", "RabbitMQBroker", "rabbitmq"),
    "amqps": ("taskflow.brokers.rabbitmq", "RabbitMQBroker", "rabbitmq"),
}

DEFAULT_URL = "sqlite:///taskflow.sqlite3"


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def broker_from_url(url: str, **options: Any) -> Broker:
    """Build a broker from a URL.

    ``memory://``, ``sqlite:///path``, ``redis://`` / ``rediss://`` (with
    ``+cluster`` or ``+sentinel``: ``redis+cluster://h1:p1,h2:p2/0``) and
    ``amqp://`` / ``amqps://`` are understood; ``options`` go to the broker.

    Raises:
        ValueError: The scheme is unknown, or its broker's extra is not installed.
    """
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ValueError(f"unknown broker URL scheme {scheme!r} in {mask_url(url)!r}: use {known}")
    module_name, class_name, extra = _SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ValueError(f"no broker for {scheme}:// in this version of taskflow") from exc
        hint = f"pip install 'taskflow-aio[{extra}]'" if extra else "reinstall taskflow-aio"
        raise ValueError(f"the {scheme}:// broker needs {exc.name!r}: {hint}") from exc
    broker_class = getattr(module, class_name)
    broker: Broker = broker_class.from_url(url, **options)
    return broker


def broker_from_env(**options: Any) -> Broker:
    """Build a broker from ``TASKFLOW_BROKER_URL`` (default ``sqlite:///taskflow.sqlite3``)."""
    return broker_from_url(os.environ.get("TASKFLOW_BROKER_URL") or DEFAULT_URL, **options)
