"""``settings.TASKFLOW`` to a broker: every key, and one clear error for each mistake."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from taskflow.broker import Broker
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.middleware import CurrentMessage, Retries

pytest.importorskip("django")


@pytest.fixture
def build() -> Callable[[Mapping[str, Any]], Broker]:
    from django.conf import settings

    if not settings.configured:
        settings.configure(TASKS={}, INSTALLED_APPS=[])
    from taskflow.integrations.django._config import build_broker

    return build_broker


def test_every_key_reaches_the_broker(
    build: Callable[[Mapping[str, Any]], Broker], tmp_path: Path
) -> None:
    broker = build(
        {
            "BROKER_URL": f"sqlite:///{tmp_path / 'b.sqlite3'}",
            "RESULTS": False,
            "MIDDLEWARE": ["taskflow.middleware.Retries", CurrentMessage()],
            "OPTIONS": {"visibility_timeout": 7.0},
        }
    )
    assert isinstance(broker, SQLiteBroker) and broker.visibility_timeout == 7.0
    assert broker.results is None
    assert [type(m) for m in broker.middleware] == [Retries, CurrentMessage]


def test_results_default_to_the_brokers_own_store(
    build: Callable[[Mapping[str, Any]], Broker], tmp_path: Path
) -> None:
    assert build({"BROKER_URL": f"sqlite:///{tmp_path / 'b.sqlite3'}"}).results is not None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"BROKER": "x"}, "unknown key(s) in settings.TASKFLOW: BROKER"),
        ({"BROKER_URL": "nope://x"}, "unknown broker URL scheme 'nope'"),
        ({"BROKER_URL": "memory://", "RESULTS": 3}, "['RESULTS'] must be True, False"),
        ({"BROKER_URL": "memory://", "MIDDLEWARE": [object()]}, "must list taskflow middleware"),
        ({"BROKER_URL": "memory://", "OPTIONS": {"colour": 1}}, "colour"),
    ],
)
def test_mistakes_are_improperly_configured(
    build: Callable[[Mapping[str, Any]], Broker], config: dict[str, object], message: str
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        build(config)
