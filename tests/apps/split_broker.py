"""A broker declared in a module of its own; its actors are in :mod:`tests.apps.split_tasks`."""

from __future__ import annotations

from taskflow.brokers.memory import MemoryBroker
from taskflow.middleware import default_middleware
from tests.apps.cli_app import Markers

broker = MemoryBroker(middleware=[*default_middleware(), Markers()])
