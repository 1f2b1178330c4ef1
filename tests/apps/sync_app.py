"""Worker app for the sync-producer tests: ``taskflow worker tests.apps.sync_app:broker``.

The broker comes from ``TASKFLOW_BROKER_URL`` (with ``TASKFLOW_NAMESPACE`` as
the Redis key prefix), keeping results on the same server. ``record`` appends
``<tag> <pid>`` to a file of its own process under ``TASKFLOW_LEDGER``, so a
test counts every run of every job from outside the system under test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import taskflow

LEDGER_ENV = "TASKFLOW_LEDGER"


def build_broker() -> taskflow.Broker:
    options: dict[str, Any] = {"results": True}
    if namespace := os.environ.get("TASKFLOW_NAMESPACE"):
        options["namespace"] = namespace
    return taskflow.broker_from_env(**options)


broker = build_broker()


@broker.actor(store_results=True)
def add(x: int, y: int) -> int:
    return x + y


@broker.actor(store_results=True, max_retries=0)
def fail(reason: str) -> None:
    raise ValueError(reason)


@broker.actor(queue="ledger")
def record(tag: str) -> None:
    append_ledger(tag)


def append_ledger(tag: str) -> None:
    directory = os.environ.get(LEDGER_ENV)
    if directory:
        path = Path(directory) / f"{os.getpid()}.log"
        with path.open("a") as f:
            f.write(f"{tag} {os.getpid()}\n")


def read_ledger(directory: Path) -> list[str]:
    """Every tag recorded under ``directory``, one per run."""
    return [
        line.split()[0]
        for path in sorted(directory.glob("*.log"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
