"""The project's broker, built once per process from ``settings.TASKFLOW``."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from taskflow._urls import DEFAULT_URL, broker_from_url
from taskflow.broker import Broker
from taskflow.middleware import Middleware
from taskflow.results import ResultBackend

BACKEND_PATH = "taskflow.integrations.django.TaskflowBackend"
_KEYS = frozenset({"BROKER_URL", "RESULTS", "MIDDLEWARE", "OPTIONS"})

_lock = threading.Lock()
_broker: Broker | None = None


def get_broker() -> Broker:
    """The project's broker, built from ``settings.TASKFLOW`` on first use.

    Raises:
        ImproperlyConfigured: ``TASKFLOW`` has an unknown key or a value of the wrong kind.
    """
    global _broker
    with _lock:
        if _broker is None:
            _broker = build_broker(getattr(settings, "TASKFLOW", {}))
        return _broker


def build_broker(config: Mapping[str, Any]) -> Broker:
    """Build a broker from a ``TASKFLOW`` settings mapping (see the package's docs)."""
    if not isinstance(config, Mapping):
        raise ImproperlyConfigured("settings.TASKFLOW must be a dict")
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"unknown key(s) in settings.TASKFLOW: {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_KEYS))}"
        )
    url = config.get("BROKER_URL") or os.environ.get("TASKFLOW_BROKER_URL") or DEFAULT_URL
    options = dict(config.get("OPTIONS") or {})
    try:
        broker = broker_from_url(
            url,
            results=_results(config.get("RESULTS", True)),
            middleware=_middleware(config.get("MIDDLEWARE")),
            **options,
        )
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"settings.TASKFLOW: {exc}") from exc
    declare_task_actors(broker)
    return broker


def _results(value: Any) -> bool | ResultBackend:
    if isinstance(value, str):
        value = import_string(value)()
    if not isinstance(value, bool | ResultBackend):
        raise ImproperlyConfigured(
            "settings.TASKFLOW['RESULTS'] must be True, False, a result backend "
            f"or its dotted path, not {value!r}"
        )
    return value


def _middleware(value: Any) -> list[Middleware] | None:
    if value is None:
        return None
    stack = [import_string(m)() if isinstance(m, str) else m for m in value]
    wrong = [m for m in stack if not isinstance(m, Middleware)]
    if wrong:
        raise ImproperlyConfigured(
            f"settings.TASKFLOW['MIDDLEWARE'] must list taskflow middleware, not {wrong[0]!r}"
        )
    return stack


def task_backend_queues() -> dict[str, set[str]]:
    """The queues of every ``TASKS`` backend that is a :class:`TaskflowBackend`, by alias."""
    tasks = getattr(settings, "TASKS", {}) or {}
    return {
        alias: set(params.get("QUEUES") or ["default"])
        for alias, params in tasks.items()
        if params.get("BACKEND") == BACKEND_PATH
    }


def declare_task_actors(broker: Broker) -> None:
    """Declare the actor that runs ``django.tasks`` tasks, on each queue of the Tasks backends."""
    queues = set().union(*task_backend_queues().values())
    if queues:
        from taskflow.integrations.django._backend import declare_runners

        declare_runners(broker, sorted(queues))


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _broker
    if setting in ("TASKFLOW", "TASKS"):
        with _lock:
            _broker = None


setting_changed.connect(_reset)
