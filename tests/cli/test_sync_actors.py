"""Sync actors in ``taskflow worker`` processes: no hoarding, stop, a call stuck in C."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from taskflow import Broker
from tests.apps import sync_actors_app
from tests.apps.cli_app import SQLITE_ENV
from tests.cli.procs import WorkerCli, wait_until

pytestmark = pytest.mark.slow

SPEC = "tests.apps.sync_actors_app:broker"
StartWorker = Callable[..., WorkerCli]


def records(cli: WorkerCli, kind: str) -> list[int]:
    """The pids of the processes that wrote a ``kind`` record, one per record."""
    return [int(p.name.split("-")[1]) for p in cli.markers.glob(f"{kind}-*")]


async def _send(broker: Broker, actor: str, args: list[Any]) -> None:
    found = broker.get_actor(actor)
    assert found is not None
    async with broker:
        await found.send_many(args)


def _stats(broker: Broker, queue: str) -> tuple[int, int]:
    async def read() -> tuple[int, int]:
        async with broker:
            stats = await broker.stats(queue)
        return stats.ready, stats.in_flight

    return anyio.run(read)


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "sync.sqlite3"
    monkeypatch.setenv(SQLITE_ENV, str(path))
    return path


def test_sigterm_with_a_sync_backlog_hands_back_what_has_not_started(
    worker_cli: StartWorker, database: Path
) -> None:
    # Given a backlog of one-second sync jobs and two processes of two threads
    broker = sync_actors_app.broker()
    anyio.run(_send, broker, "chore", [(1.0,)] * 12)
    cli = worker_cli(SPEC, "--processes", "2", "--threads", "2", env={SQLITE_ENV: str(database)})
    wait_until(lambda: len(records(cli, "job")) >= 4, 15, "four jobs to start")
    # When SIGTERM comes while four run
    cli.signal(signal.SIGTERM)
    assert cli.wait(timeout=10) == 0
    # Expect the four to have been shared by the processes, and the rest handed back
    assert sorted(Counter(records(cli, "job")).values()) == [2, 2]
    assert len(records(cli, "done")) == 4
    assert _stats(broker, "sync") == (8, 0)


def test_a_sync_actor_stuck_in_c_code_gets_its_process_replaced(
    worker_cli: StartWorker, database: Path
) -> None:
    # Given a sync actor blocked in C code, past its time limit of 0.5 s
    broker = sync_actors_app.broker()
    anyio.run(_send, broker, "wedged", [()])
    cli = worker_cli(SPEC, "--queues", "stuck", env={SQLITE_ENV: str(database)})
    (first,) = cli.wait_for_pids(1)
    # Expect the call given up 0.5 s after its limit, the message failed, the child replaced
    cli.wait_for_log("exited with status 4; restarting it in", timeout=15)
    assert cli.wait_for_pids(2) - {first}
    output = cli.output()
    assert "sync actor wedged is stuck: still running 0.5 s after its time limit of 0.5 s" in output
    assert f"[{first}] ERROR taskflow.cli.child: a sync actor is stuck" in output

    async def dead() -> list[str]:
        async with broker:
            return [letter.reason for letter in await broker.dead_letters("stuck")]

    (reason,) = anyio.run(dead)
    assert "wedged ran over its time limit of 0.5 s and was still running 0.5 s later" in reason
    cli.signal(signal.SIGTERM)
    assert cli.wait(timeout=10) == 0
