from __future__ import annotations

import pytest

from taskflow import broker_from_env, broker_from_url
from taskflow._urls import mask_url
from taskflow.brokers.memory import MemoryBroker


def test_memory_url() -> None:
    broker = broker_from_url("memory://", max_deliveries=3)
    assert isinstance(broker, MemoryBroker) and broker.max_deliveries == 3


def test_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLOW_BROKER_URL", "memory://")
    assert isinstance(broker_from_env(), MemoryBroker)


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown broker URL scheme 'kafka'"):
        broker_from_url("kafka://user:secret@host/")


def test_passwords_are_masked() -> None:
    assert mask_url("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert mask_url("amqp://:pw@host/") == "amqp://:***@host/"
    assert mask_url("redis://host:6379") == "redis://host:6379"
    with pytest.raises(ValueError) as info:
        broker_from_url("kafka://user:secret@host/")
    assert "secret" not in str(info.value)
