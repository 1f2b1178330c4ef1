"""The commands together on a SQLite file: send, worker processes, queues, dlq."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from taskflow.cli.app import app
from tests.apps.cli_app import SQLITE_ENV
from tests.cli.procs import WorkerCli, wait_until

pytestmark = pytest.mark.slow

SPEC = "tests.apps.cli_app:sqlite_broker"


def test_messages_sent_from_the_shell_are_processed_by_worker_processes(
    worker_cli: Callable[..., WorkerCli], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "tasks.sqlite3"
    monkeypatch.setenv(SQLITE_ENV, str(database))

    def run(*args: str) -> Result:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result

    def counts() -> list[str]:
        (row,) = [line.split() for line in run("queues", SPEC).stdout.splitlines()[1:]]
        return row

    # Given two messages sent from the shell, one of which its actor rejects
    run("send", SPEC, "greet", "--args", '["ada"]')
    doomed_id = run("send", SPEC, "doomed", "--kwargs", '{"reason": "no way"}').stdout.strip()
    assert counts() == ["default", "2", "0", "0", "0"]
    # When worker processes run
    cli = worker_cli(SPEC, "--processes", "2", env={SQLITE_ENV: str(database)})
    wait_until(lambda: cli.pids("greeted-ada") != set(), 15, "ada to be greeted")
    wait_until(lambda: counts() == ["default", "0", "0", "0", "1"], 15, "the queue to drain")
    cli.signal(signal.SIGTERM)
    assert cli.wait(timeout=10) == 0
    # Expect the rejected one in the dead letters, and it can be requeued
    (line,) = run("dlq", "list", SPEC, "--queue", "default").stdout.splitlines()
    message_id, _, actor, reason = line.split("  ")
    assert (message_id, actor, reason) == (doomed_id, "doomed", "rejected: no way")
    run("dlq", "requeue", SPEC, "--queue", "default", "--id", doomed_id)
    assert counts() == ["default", "1", "0", "0", "0"]
