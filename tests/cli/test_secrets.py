"""A worker process masks secrets in what it logs and in dead-letter reasons."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskflow.cli.app import app
from tests.apps.cli_app import SQLITE_ENV
from tests.cli.procs import WorkerCli, wait_until
from tests.test_redact import SECRET, URL


@pytest.mark.slow
def test_a_worker_process_logs_and_dead_letters_no_secret(
    worker_cli: Callable[..., WorkerCli], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = "tests.apps.cli_app:sqlite_broker"
    database = tmp_path / "tasks.sqlite3"
    monkeypatch.setenv(SQLITE_ENV, str(database))
    runner = CliRunner()
    sent = runner.invoke(app, ["send", spec, "leaky", "--args", json.dumps([URL])])
    assert sent.exit_code == 0, sent.output

    cli = worker_cli(spec, env={SQLITE_ENV: str(database)})
    wait_until(lambda: "failed for good" in cli.output(), 15, "the failure to be logged")
    cli.signal(signal.SIGTERM)
    assert cli.wait(timeout=10) == 0

    letters = runner.invoke(app, ["dlq", "list", spec, "--queue", "default"]).stdout
    assert "postgresql://app:***@db.internal" in letters
    assert "postgresql://app:***@db.internal" in cli.output()
    assert "Traceback" in cli.output()
    assert SECRET not in letters + cli.output()
