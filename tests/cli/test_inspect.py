"""``taskflow queues``, ``dlq`` and ``send`` in-process against a prepared MemoryBroker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import anyio
import pytest
from typer.testing import CliRunner, Result

from taskflow import QueueStats
from taskflow._inspection import WorkerRecord, encode_record
from taskflow.brokers.memory import MemoryBroker
from taskflow.cli.app import app
from taskflow.cli.workers import COLUMNS as WORKER_COLUMNS
from tests.apps import cli_app

SPEC = "tests.apps.cli_app:prepared"


class Prepared:
    """A broker holding, in "emails": 1 ready, 1 delayed and 2 dead; in "default": 1 ready."""

    def __init__(self) -> None:
        self.broker = MemoryBroker()

        @self.broker.actor(queue="emails")
        def send_email(to: str) -> None: ...

        @self.broker.actor
        async def ping() -> None: ...

        self.dead_ids = anyio.run(self._fill)

    async def _fill(self) -> list[str]:
        email, pong = self.broker.actors["send_email"], self.broker.actors["ping"]
        doomed = [await email.send("x@example.com"), await email.send("y@example.com")]
        async for delivery in self.broker.consume("emails", prefetch=1):
            await delivery.nack(f"failed: ValueError: bad address {delivery.message.args[0]}")
            if (await self.broker.stats("emails")).dead == 2:
                break
        await email.send("a@example.com")
        await email.send_with_options(args=("b@example.com",), delay=3600)
        await pong.send()
        await self.broker.close()
        return [m.id for m in doomed]

    def stats(self, queue: str) -> QueueStats:
        return anyio.run(self.broker.stats, queue)


@pytest.fixture
def prepared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Prepared]:
    state = Prepared()
    monkeypatch.setattr(cli_app, "prepared", state.broker)
    yield state


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_queues_prints_a_table_of_every_known_queue(prepared: Prepared) -> None:
    lines = invoke("queues", SPEC).stdout.splitlines()

    assert lines[0].split() == ["queue", "ready", "delayed", "in_flight", "dead"]
    assert sorted(line.split() for line in lines[1:]) == [
        ["default", "1", "0", "0", "0"],
        ["emails", "1", "1", "0", "2"],
    ]


def test_dlq_list_prints_id_dead_at_actor_and_reason(prepared: Prepared) -> None:
    lines = invoke("dlq", "list", SPEC, "--queue", "emails").stdout.splitlines()

    assert [line.split("  ")[0] for line in lines] == prepared.dead_ids
    message_id, dead_at, actor, reason = lines[0].split("  ")
    assert dead_at.endswith("+00:00") and "T" in dead_at
    assert actor == "send_email"
    assert reason == "failed: ValueError: bad address x@example.com"
    limited = invoke("dlq", "list", SPEC, "--queue", "emails", "--limit", "1").stdout
    assert limited.splitlines() == lines[:1]


def test_dlq_list_of_an_empty_queue_says_so_on_stderr(prepared: Prepared) -> None:
    result = invoke("dlq", "list", SPEC, "-q", "default")

    assert result.stdout == ""
    assert result.stderr.strip() == "no dead letters in 'default'"


def test_dlq_requeue_by_id_then_all(prepared: Prepared) -> None:
    first, second = prepared.dead_ids

    result = invoke("dlq", "requeue", SPEC, "--queue", "emails", "--id", first)
    assert result.stdout.strip() == "requeued 1 dead letter(s) to 'emails'"
    assert prepared.stats("emails") == QueueStats(ready=2, delayed=1, in_flight=0, dead=1)

    result = invoke("dlq", "requeue", SPEC, "--queue", "emails")
    assert result.stdout.strip() == "requeued 1 dead letter(s) to 'emails'"
    assert prepared.stats("emails") == QueueStats(ready=3, delayed=1, in_flight=0, dead=0)


def test_dlq_purge_deletes_the_dead_letters_only(prepared: Prepared) -> None:
    result = invoke("dlq", "purge", SPEC, "--queue", "emails")

    assert result.stdout.strip() == "purged 2 dead letter(s) from 'emails'"
    assert prepared.stats("emails") == QueueStats(ready=1, delayed=1, in_flight=0, dead=0)


def test_send_enqueues_a_message_and_prints_its_id(prepared: Prepared) -> None:
    delayed = invoke("send", SPEC, "send_email", "--args", '["z@example.com"]', "--delay", "60")
    now = invoke("send", SPEC, "send_email", "--kwargs", '{"to": "k@example.com"}')

    assert prepared.stats("emails").delayed == 2
    sent = anyio.run(_ready_messages, prepared.broker, "emails")
    assert sent[now.stdout.strip()] == ((), {"to": "k@example.com"})
    assert delayed.stdout.strip() not in sent


async def _ready_messages(
    broker: MemoryBroker, queue: str
) -> dict[str, tuple[tuple[object, ...], dict[str, object]]]:
    found = {}
    with anyio.fail_after(5):
        async for delivery in broker.consume(queue, prefetch=1):
            found[delivery.message.id] = (delivery.message.args, delivery.message.kwargs)
            await delivery.ack()
            if (await broker.stats(queue)).ready == 0:
                break
    return found


def test_send_with_bad_json_or_an_unknown_actor_exits_2(prepared: Prepared) -> None:
    runner = CliRunner()
    bad_json = runner.invoke(app, ["send", SPEC, "send_email", "--args", '{"to": 1}'])
    unknown = runner.invoke(app, ["send", SPEC, "nobody"])

    assert bad_json.exit_code == unknown.exit_code == 2
    assert bad_json.stderr.startswith("Error: --args must be a JSON array")
    assert unknown.stderr.strip() == (
        f"Error: {SPEC!r} has no actor named 'nobody' (declared: ping, send_email)"
    )
    assert prepared.stats("emails") == QueueStats(ready=1, delayed=1, in_flight=0, dead=2)


def test_inspect_prints_a_message_wherever_it_is(prepared: Prepared) -> None:
    first = prepared.dead_ids[0]
    shown = json.loads(invoke("inspect", SPEC, first).stdout)
    assert shown["state"] == "dead" and shown["queue"] == "emails"
    assert shown["message"]["args"] == ["x@example.com"]
    assert shown["reason"] == "failed: ValueError: bad address x@example.com"


def test_inspect_of_an_unknown_id_is_one_line_and_status_2(prepared: Prepared) -> None:
    result = CliRunner().invoke(app, ["inspect", SPEC, "nope"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: no message 'nope' in any queue"


def test_workers_lists_a_registered_worker(prepared: Prepared) -> None:
    record = WorkerRecord(
        id="w1",
        host="box",
        pid=42,
        queues=["emails"],
        concurrency=4,
        started_at=time.time(),
        last_heartbeat=time.time(),
        in_progress=1,
        processed=7,
    )
    anyio.run(prepared.broker._register_worker, "w1", encode_record(record), 60.0)
    lines = invoke("workers", SPEC).stdout.splitlines()
    assert lines[0].split() == list(WORKER_COLUMNS)
    cells = lines[1].split()
    assert cells[:5] == ["w1", "box", "42", "emails", "4"] and cells[6:] == ["1", "7"]


def test_workers_without_any_says_so(prepared: Prepared) -> None:
    result = invoke("workers", SPEC)
    assert result.stdout == "" and result.stderr.strip() == "no live workers"
