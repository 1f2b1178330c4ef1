"""Fixtures shared by the sync-producer, Django and Flask tests: a broker per server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import taskflow
from tests.apps.redis_app import delete_namespace
from tests.apps.sync_app import read_ledger
from tests.conftest import REDIS_URL, require_service


@dataclass
class Target:
    """Where a test's messages go: a URL, a Redis namespace, a ledger of the jobs that ran."""

    url: str
    namespace: str
    ledger: Path
    env: dict[str, str] = field(default_factory=dict)

    def broker(self, **options: Any) -> taskflow.Broker:
        if self.namespace:
            options["namespace"] = self.namespace
        return taskflow.broker_from_url(self.url, results=True, **options)

    def ran(self) -> list[str]:
        return read_ledger(self.ledger)


@pytest.fixture(params=["sqlite", "redis"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A SQLite file of the test's own, or a namespace of its own on the test Redis."""
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TASKFLOW_LEDGER": str(ledger)}
    env.pop("TASKFLOW_NAMESPACE", None)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
        yield Target(url, "", ledger, {**env, "TASKFLOW_BROKER_URL": url})
        return
    url = require_service("Redis", REDIS_URL, 6379)
    namespace = f"tf-sync-{uuid.uuid4().hex[:12]}"
    env = {**env, "TASKFLOW_BROKER_URL": url, "TASKFLOW_NAMESPACE": namespace}
    try:
        yield Target(url, namespace, ledger, env)
    finally:
        delete_namespace(url, namespace)
