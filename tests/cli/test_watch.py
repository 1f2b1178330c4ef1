"""``taskflow worker --watch``: restart the children when Python files change."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskflow.cli.app import app
from tests.cli.procs import APP, WorkerCli, alive, holds_within, parent_of

StartWorker = Callable[..., WorkerCli]


@pytest.mark.slow
def test_a_changed_py_file_restarts_the_children(worker_cli: StartWorker, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    module = source / "tasks.py"
    module.write_text("x = 0\n")
    cli = worker_cli(APP, "--processes", "2", "--watch", str(source))
    first = cli.wait_for_pids(2)
    cli.wait_for_log("watching")

    # The watcher may still be settling in: change the file again until it reacts
    # (it says so at once; new children may take seconds to start on a busy machine).
    def reacted() -> bool:
        return "changed; restarting the children" in cli.output()

    def restarted() -> bool:
        return len(cli.pids() - first) >= 2

    for edit in range(1, 11):
        module.write_text(f"x = {edit}\n")
        if holds_within(reacted, 1.0):
            break
    assert holds_within(restarted, 20.0), f"children were not restarted; log:\n{cli.output()}"

    assert "tasks.py changed; restarting the children" in cli.output()
    assert first <= cli.pids("stopped")  # the old children stopped gracefully
    assert not any(alive(pid) for pid in first)
    assert {parent_of(pid) for pid in cli.pids() - cli.pids("stopped")} == {cli.pid}
    cli.signal(signal.SIGTERM)
    assert cli.wait(timeout=10) == 0


def test_watch_without_watchfiles_is_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # makes the import fail

    result = CliRunner().invoke(app, ["worker", APP, "--watch", str(tmp_path)])

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: --watch needs watchfiles: pip install 'taskflow-aio[watch]'"
    ]
