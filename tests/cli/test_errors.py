"""A bad broker spec or an unreachable server: one line on stderr, status 2, no traceback."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import taskflow.cli
from taskflow.brokers.memory import MemoryBroker
from taskflow.cli.app import app
from taskflow.cli.loading import CliError, load_broker
from tests.apps import cli_app
from tests.cli.procs import REPO

BAD_SPECS = {
    "tests.apps.no_such_module:broker": "cannot import module 'tests.apps.no_such_module'",
    "tests.apps.cli_app:missing": "module 'tests.apps.cli_app' has no attribute 'missing'",
    "tests.apps.cli_app:not_a_broker": "'tests.apps.cli_app:not_a_broker' is of type int, not a taskflow.Broker",
    "tests.apps.cli_app:returns_a_string": "is of type str, not a taskflow.Broker",
    "tests.apps.cli_app:needs_arguments": "is a callable that needs arguments",
    "tests.apps.cli_app:unreachable": "cannot connect to the broker 'tests.apps.cli_app:unreachable': connection refused",
}


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_worker_with_a_bad_spec_exits_2_with_one_line(spec: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskflow", "worker", spec],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    assert BAD_SPECS[spec] in lines[0]
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_queues_with_a_bad_spec_exits_2_with_one_line(spec: str) -> None:
    result = CliRunner().invoke(app, ["queues", spec])

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert BAD_SPECS[spec] in result.stderr
    assert result.stdout == ""


def test_usage_errors_exit_2() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["worker"]).exit_code == 2
    assert runner.invoke(app, ["worker", "tests.apps.cli_app:broker", "-p", "0"]).exit_code == 2
    assert runner.invoke(app, ["dlq", "list", "tests.apps.cli_app:broker"]).exit_code == 2
    assert runner.invoke(app, ["nonsense"]).exit_code == 2


def test_an_error_inside_the_users_module_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_a_dependency.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    result = CliRunner().invoke(app, ["queues", "needs_a_dependency:broker"])

    assert result.exit_code == 2
    assert "Traceback" in result.stderr  # a bug in the app, not a bad path: show where
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: importing 'needs_a_dependency' failed: "
        "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"
    )


def test_load_broker_accepts_an_instance_a_factory_and_a_default_attribute() -> None:
    assert load_broker("tests.apps.cli_app:broker") is cli_app.broker
    assert load_broker("tests.apps.cli_app:make_broker") is cli_app.broker
    assert load_broker("tests.apps.cli_app") is cli_app.broker
    assert isinstance(load_broker("taskflow.brokers.memory:MemoryBroker"), MemoryBroker)
    with pytest.raises(CliError, match="expected MODULE:BROKER"):
        load_broker(":broker")


def test_python_dash_m_and_the_console_script_run_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskflow", "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    assert "worker" in done.stdout and "dlq" in done.stdout

    (script,) = importlib.metadata.entry_points(group="console_scripts", name="taskflow")
    assert script.load() is taskflow.cli.main
