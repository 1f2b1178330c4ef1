"""Middleware: async layers around the processing of each message.

The default stack, outermost first: current message, age limit, callbacks,
composition (pipelines and group completion), results (when the broker has
a backend), retries, time limit. Each layer wraps the next; the actor runs
inside the innermost.

Results sit inside callbacks and composition so that a message's result is
stored before its callback, next pipeline step or group completion is sent:
whatever runs next can read it. Retries sit inside results so that only
final outcomes are stored.
"""

from __future__ import annotations

from taskflow.middleware.age_limit import AgeLimit
from taskflow.middleware.base import CallNext, Context, Middleware, build_stack
from taskflow.middleware.callbacks import Callbacks
from taskflow.middleware.composition import Composition
from taskflow.middleware.current_message import CurrentMessage, current_delivery, current_message
from taskflow.middleware.results import Results
from taskflow.middleware.retries import Retries
from taskflow.middleware.time_limit import TimeLimit

__all__ = [
    "AgeLimit",
    "CallNext",
    "Callbacks",
    "Composition",
    "Context",
    "CurrentMessage",
    "Middleware",
    "Results",
    "Retries",
    "TimeLimit",
    "build_stack",
    "current_delivery",
    "current_message",
    "default_middleware",
]


def default_middleware() -> list[Middleware]:
    """Return a fresh default stack (without results; the broker adds those before retries)."""
    return [CurrentMessage(), AgeLimit(), Callbacks(), Composition(), Retries(), TimeLimit()]
