"""The broker fixture of the contract suite: one param per broker.

A broker plugs in by adding a factory to ``FACTORIES``. A factory gets the
pytest request, a temporary directory and broker options, and returns an
unconnected broker whose queues are private to the test (unique names or a
unique namespace), so runs never interfere.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from taskflow import Broker
from taskflow.brokers.memory import MemoryBroker

Factory = Callable[[pytest.FixtureRequest, Path, dict[str, Any]], Broker]


def _memory(request: pytest.FixtureRequest, tmp_path: Path, options: dict[str, Any]) -> Broker:
    return MemoryBroker(**options)


FACTORIES: dict[str, Factory] = {
    "memory": _memory,
    "sqlite": lambda request, tmp_path, options: __import__(
        "taskflow.brokers.sqlite", fromlist=["SQLiteBroker"]
    ).SQLiteBroker(tmp_path / "taskflow.sqlite3", **options),
    "redis": lambda request, tmp_path, options: __import__(
        "tests.apps.redis_app", fromlist=["contract_broker"]
    ).contract_broker(request, options),
    "rabbitmq": lambda request, tmp_path, options: __import__(
        "tests.apps.rabbitmq_app", fromlist=["contract_broker"]
    ).contract_broker(request, options),
    "rabbitmq-quorum": lambda request, tmp_path, options: __import__(
        "tests.apps.rabbitmq_app", fromlist=["contract_broker"]
    ).contract_broker(request, options, queue_type="quorum"),
}


@pytest.fixture
def broker_options() -> dict[str, Any]:
    """Options for the broker under test; override in a test module to change them."""
    return {}


@pytest.fixture(params=sorted(FACTORIES))
async def broker(
    request: pytest.FixtureRequest, tmp_path: Path, broker_options: dict[str, Any]
) -> AsyncIterator[Broker]:
    b = FACTORIES[request.param](request, tmp_path, broker_options)
    async with b:
        yield b


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"
