"""Middleware: async layers around the processing of each message.

The default stack, outermost first: current message, age limit, rate
limits, callbacks, composition (pipelines and group completion), results
(when the broker has a backend), retries, time limit. Each layer wraps the next; the actor runs
inside the innermost.

Results sit inside callbacks and composition so that a message's result is
stored before its callback, next pipeline step or group completion is sent:
whatever runs next can read it. Retries sit inside results so that only
final outcomes are stored. Rate limits sit outside all three: a message
deferred because a limiter is full has no outcome yet, and its limiters are
held for the whole run, follow-ups included.

:class:`OpenTelemetry` (extra ``taskflow-aio[otel]``) and :class:`Prometheus`
(extra ``taskflow-aio[prometheus]``) are not in the default stack; put them
first in a stack of your own. They are imported on first use, so this
package never needs their libraries.

This module owns that order: :func:`default_middleware` returns it, and a
broker built with ``results=`` but a stack of its own gets its results layer
placed by :func:`with_results`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskflow.middleware.age_limit import AgeLimit
from taskflow.middleware.base import CallNext, Context, Middleware, Outcome, build_stack
from taskflow.middleware.callbacks import Callbacks
from taskflow.middleware.composition import Composition
from taskflow.middleware.current_message import CurrentMessage, current_delivery, current_message
from taskflow.middleware.rate_limits import RateLimits
from taskflow.middleware.results import Results
from taskflow.middleware.retries import Retries
from taskflow.middleware.time_limit import TimeLimit

if TYPE_CHECKING:
    from taskflow.middleware.opentelemetry import OpenTelemetry
    from taskflow.middleware.prometheus import Prometheus
    from taskflow.rate_limits.backends import RateLimitBackend
    from taskflow.results import ResultBackend

__all__ = [
    "AgeLimit",
    "CallNext",
    "Callbacks",
    "Composition",
    "Context",
    "CurrentMessage",
    "Middleware",
    "OpenTelemetry",
    "Outcome",
    "Prometheus",
    "RateLimits",
    "Results",
    "Retries",
    "TimeLimit",
    "build_stack",
    "current_delivery",
    "current_message",
    "default_middleware",
    "with_results",
]


def default_middleware(
    *, results: ResultBackend | None = None, rate_limits: RateLimitBackend | None = None
) -> list[Middleware]:
    """Return a fresh default stack, outermost first.

    Args:
        results: A result backend to store results in; its layer goes just
            outside retries. A broker built with ``results=`` adds it itself.
        rate_limits: Where ``max_concurrency`` is counted; default: the
            broker's own server. A ``RabbitMQBroker`` needs one here to use
            ``max_concurrency`` (a ``RedisBackend`` or ``SQLiteBackend``).
    """
    stack: list[Middleware] = [
        CurrentMessage(),
        AgeLimit(),
        RateLimits(rate_limits),
        Callbacks(),
        Composition(),
        Retries(),
        TimeLimit(),
    ]
    return with_results(stack, results)


def with_results(
    middleware: Sequence[Middleware], results: ResultBackend | None
) -> list[Middleware]:
    """Return ``middleware`` with a :class:`Results` layer for ``results`` in its place.

    The layer goes just outside :class:`Retries` (so that only final outcomes
    are stored), or innermost without retries. A stack that already has a
    results layer, or no backend, is returned as it is.
    """
    stack = list(middleware)
    if results is None or any(isinstance(m, Results) for m in stack):
        return stack
    at = next((i for i, m in enumerate(stack) if isinstance(m, Retries)), len(stack))
    stack.insert(at, Results(results))
    return stack


_OPTIONAL = {
    "OpenTelemetry": "taskflow.middleware.opentelemetry",
    "Prometheus": "taskflow.middleware.prometheus",
}


def __getattr__(name: str) -> Any:
    # The optional layers import their libraries only when asked for.
    module = _OPTIONAL.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
