"""``--log-format json``: one JSON object per line, with the message's fields while processing."""

from __future__ import annotations

import io
import json
import logging
import signal
import uuid
from collections.abc import Callable, Iterator

import anyio
import pytest

from taskflow.logs import JsonFormatter
from tests.apps import obs_app
from tests.apps.redis_app import delete_namespace
from tests.cli.procs import WorkerCli

StartWorker = Callable[..., WorkerCli]


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    name = f"tf-obs-{uuid.uuid4().hex[:12]}"
    yield name
    delete_namespace(redis_url, name)


@pytest.mark.slow
def test_every_line_of_a_worker_is_a_json_object(
    worker_cli: StartWorker, redis_url: str, namespace: str
) -> None:
    cli = worker_cli(
        "tests.apps.obs_app:broker",
        *("--log-format", "json", "--processes", "1"),
        env={obs_app.URL_ENV: redis_url, obs_app.NAMESPACE_ENV: namespace},
    )
    (child,) = cli.wait_for_pids(1)

    async def send() -> str:
        async with obs_app.build(redis_url, namespace) as broker:
            message = await broker.actors["broken"].send()
            await broker.join(obs_app.QUEUE, timeout=20)
            return message.id

    message_id = anyio.run(send)
    cli.wait_for_log("failed for good")
    cli.signal(signal.SIGTERM)
    assert cli.wait(timeout=20) == 0

    lines = [json.loads(line) for line in cli.output().splitlines()]  # every line parses
    for entry in lines:
        assert {"time", "level", "logger", "message"} <= entry.keys()
    [retry] = [
        e
        for e in lines
        if e["logger"] == "taskflow.middleware.retries" and "retry 1" in e["message"]
    ]
    assert retry["level"] == "WARNING"
    assert (retry["message_id"], retry["actor"], retry["queue"]) == (message_id, "broken", "obs")
    assert retry["process"] == child
    assert "ValueError: broken on purpose" in retry["exception"]  # the traceback, in the object
    consuming = next(e for e in lines if "consuming obs" in e["message"])
    assert "message_id" not in consuming  # no message is being processed there
    assert any(e["logger"] == "taskflow.cli.supervisor" for e in lines)  # the parent too


def test_json_formatter_keeps_extra_fields() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"test.json.{uuid.uuid4().hex}")
    log.addHandler(handler)
    log.propagate = False
    log.warning("hello %s", "there", extra={"tenant": "acme"})
    entry = json.loads(out.getvalue())
    assert entry["message"] == "hello there"
    assert entry["tenant"] == "acme"
    assert entry["level"] == "WARNING"
    assert entry["time"].endswith("+00:00")
