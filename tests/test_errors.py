"""The exception tree: one module, one drawing, every class in it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import taskflow
from taskflow import errors
from taskflow.brokers.memory import MemoryBroker
from taskflow.middleware import Retries

# Signals that never leave their module: the CLI's one-line error and the
# retry helper's give-up marker.
# Private signals that never reach users: the CLI's one-line error, the retry
# helper's give-up, and the Redis transport's "WAIT fell short" (retried as an
# outage until send_timeout, then BrokerUnavailable).
_LOCAL = {
    "taskflow.cli.errors.CliError",
    "taskflow._retrying.GaveUp",
    "taskflow.brokers.redis._connection.NotReplicated",
}
_OPTIONAL_DRIVERS = ("taskflow.integrations", "taskflow.middleware.opentelemetry")


def _exception_classes() -> set[str]:
    found = set()
    for info in pkgutil.walk_packages(taskflow.__path__, "taskflow."):
        if info.name.startswith(_OPTIONAL_DRIVERS):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional driver that is not installed
            continue
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                if obj.__module__ == info.name:
                    found.add(f"{info.name}.{name}")
    return found


def test_every_exception_class_lives_in_errors_and_in_its_drawing() -> None:
    classes = _exception_classes() - _LOCAL
    assert {c for c in classes if not c.startswith("taskflow.errors.")} == set()
    drawing = errors.__doc__ or ""
    for qualified in classes:
        name = qualified.rsplit(".", 1)[1]
        assert issubclass(getattr(errors, name), errors.TaskflowError), name
        drawn = re.search(rf"^[\s│├└─]*{name}\b", drawing, flags=re.MULTILINE)
        assert drawn, f"{name} is not drawn in the errors.py tree"


def test_moved_classes_still_import_from_their_old_homes() -> None:
    from taskflow.brokers.rabbitmq import PublishRejected, Unroutable
    from taskflow.worker import WorkerShutdown

    assert PublishRejected is errors.PublishRejected
    assert Unroutable is errors.Unroutable
    assert WorkerShutdown is errors.WorkerShutdown
    assert taskflow.ResultsNotConfigured is errors.ResultsNotConfigured


def test_timeouts_are_timeout_errors() -> None:
    assert issubclass(errors.ResultTimeout, TimeoutError)
    assert issubclass(errors.JoinTimeout, TimeoutError)


def test_a_middleware_class_instead_of_an_object_is_a_middleware_error() -> None:
    with pytest.raises(errors.MiddlewareError, match=r"write Retries\(\)"):
        MemoryBroker(middleware=[Retries])
