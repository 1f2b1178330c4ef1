"""Sync actors on a SQLite file (``TASKFLOW_CLI_SQLITE``), for worker-process tests.

Each actor call writes ``<name>-<pid>-<n>`` markers (started / done) into
``TASKFLOW_CLI_MARKERS``. ``wedged`` blocks in C code (``time.sleep``), which
an exception raised into its thread cannot interrupt.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from taskflow import Broker
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.middleware import Middleware, TimeLimit, default_middleware
from tests.apps.cli_app import MARKERS_ENV, SQLITE_ENV, Markers

STUCK_GRACE = 0.5


def record(kind: str) -> None:
    directory = os.environ.get(MARKERS_ENV)
    if directory:
        name = f"{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        (Path(directory) / name).write_text(f"{time.time()}\n")


def _middleware() -> list[Middleware]:
    stack = [
        TimeLimit(stuck_grace=STUCK_GRACE) if isinstance(m, TimeLimit) else m
        for m in default_middleware()
    ]
    return [*stack, Markers()]


def broker() -> Broker:
    shared = SQLiteBroker(os.environ[SQLITE_ENV], middleware=_middleware())

    @shared.actor(queue="sync", time_limit=None)
    def chore(seconds: float) -> None:
        record("job")
        time.sleep(seconds)
        record("done")

    @shared.actor(queue="stuck", time_limit=0.5, max_retries=0)
    def wedged() -> None:
        record("wedged")
        time.sleep(3600)

    return shared
