"""Secrets masked in the exception text taskflow writes: logs, dead-letter reasons, results."""

from __future__ import annotations

import json
import logging

import pytest

from taskflow import ResultFailed, Worker
from taskflow._redact import redact
from taskflow.brokers.memory import MemoryBroker
from taskflow.logs import JsonFormatter

SECRET = "hunter2-s3cr3t"
URL = f"postgresql://app:{SECRET}@db.internal:5432/orders"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"could not connect to {URL}",
            "could not connect to postgresql://app:***@db.internal:5432/orders",
        ),
        (f"redis://:{SECRET}@cache:6379/0 refused", "redis://:***@cache:6379/0 refused"),
        (f"login failed password={SECRET} user=app", "login failed password=*** user=app"),
        (f"{{'db_password': '{SECRET}', 'port': 5432}}", "{'db_password': '***', 'port': 5432}"),
        (f'{{"api_key": "{SECRET}"}}', '{"api_key": "***"}'),
        (f"token: {SECRET}", "token: ***"),
        (f"Authorization: Bearer {SECRET}abc", "Authorization: Bearer ***"),
        ("key AKIAIOSFODNN7EXAMPLE leaked", "key *** leaked"),
        ("ghp_" + "a" * 36, "***"),
        ("nothing to hide at http://example.com/a:b", "nothing to hide at http://example.com/a:b"),
    ],
)
def test_redact_masks_credentials_and_secret_looking_values(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # masking twice changes nothing


@pytest.mark.anyio
async def test_a_failure_leaks_no_secret_to_logs_dead_letters_or_results(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = MemoryBroker(results=True)

    @broker.actor(store_results=True, max_retries=0)
    async def connect() -> None:
        raise ConnectionError(f"could not connect to {URL}")

    caplog.set_level(logging.INFO)
    message = await connect.send()
    async with Worker(broker):
        await broker.join("default", timeout=10)

    with pytest.raises(ResultFailed) as failed:
        await message.result(timeout=5)
    (letter,) = await broker.dead_letters("default")
    records = [r for r in caplog.records if r.name.startswith("taskflow")]
    json_lines = [JsonFormatter().format(r) for r in records]
    written = [caplog.text, letter.reason, str(failed.value), failed.value.traceback, *json_lines]
    assert "postgresql://app:***@db.internal" in letter.reason
    assert "postgresql://app:***@db.internal" in failed.value.traceback
    assert any("Traceback" in line for line in caplog.text.splitlines())
    assert "app:***@db.internal" in json.loads(json_lines[-1]).get("exception", "") + caplog.text
    for text in written:
        assert SECRET not in text
