"""``taskflow worker`` at start: a small supervisor, several modules, queues no actor serves."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskflow.cli.app import app
from tests.cli.procs import APP, REPO, WorkerCli

StartWorker = Callable[..., WorkerCli]

UNSERVED = "no actor for queue(s)"


def _stop(cli: WorkerCli) -> str:
    cli.signal(signal.SIGTERM)
    assert cli.wait(timeout=10) == 0
    return cli.output()


@pytest.mark.slow
def test_the_application_is_imported_only_in_children(worker_cli: StartWorker) -> None:
    cli = worker_cli(APP, "--processes", "2")

    children = cli.wait_for_pids(2)

    importers = cli.pids("imported")
    assert children <= importers  # the workers, and the short-lived start-up check
    assert cli.pid not in importers
    cmdline = Path(f"/proc/{cli.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1].endswith(b"taskflow/cli/_supervisor_main.py")  # same pid, exec'd
    _stop(cli)


def test_the_supervisor_loads_neither_typer_nor_the_library() -> None:
    # What taskflow/cli/_supervisor_main.py does before it runs the supervisor.
    code = (
        "import sys, types\n"
        "package = types.ModuleType('taskflow')\n"
        f"package.__path__ = [{str(REPO / 'taskflow')!r}]\n"
        "sys.modules['taskflow'] = package\n"
        "import taskflow.cli.supervisor\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )

    loaded = set(done.stdout.split())
    assert "taskflow.cli.supervisor" in loaded
    assert not {"typer", "click", "taskflow.broker", "taskflow.worker", "tests.apps"} & loaded
    assert not any(name.startswith(("taskflow.middleware", "taskflow.brokers")) for name in loaded)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["tests.apps.split_tasks", "tests.apps.split_broker:broker"],
        ["tests.apps.split_broker:broker", "--include", "tests.apps.split_tasks"],
    ],
    ids=["modules", "include"],
)
def test_actors_may_come_from_other_modules(worker_cli: StartWorker, args: list[str]) -> None:
    cli = worker_cli(*args)

    cli.wait_for_log("consuming reports (concurrency")

    assert UNSERVED not in _stop(cli)


@pytest.mark.slow
def test_a_broker_without_actors_warns_naming_the_module(worker_cli: StartWorker) -> None:
    cli = worker_cli("tests.apps.split_broker:broker")

    cli.wait_for_log("consuming default")

    assert (
        "WARNING taskflow.cli.child: no actor for queue(s) default in tests.apps.split_broker "
        "(0 actor(s) declared; their queues: none)"
    ) in _stop(cli)


@pytest.mark.slow
def test_a_queue_no_actor_serves_is_named_at_start(worker_cli: StartWorker) -> None:
    cli = worker_cli(APP, "--queues", "emails,emials")

    cli.wait_for_log("consuming emails, emials")

    assert (
        "no actor for queue(s) emials in tests.apps.cli_app (3 actor(s) declared; "
        "their queues: default, emails)"
    ) in _stop(cli)


def test_two_modules_naming_a_broker_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["worker", "tests.apps.cli_app:broker", "a.b:broker"])

    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: name the broker once, not in 'tests.apps.cli_app:broker' and 'a.b:broker'"
    )


def test_a_module_to_include_that_does_not_import_exits_2_with_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskflow", "worker", APP, "-I", "tests.apps.no_such_module"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 2
    assert done.stderr.strip() == (
        "Error: cannot import module 'tests.apps.no_such_module': "
        "No module named 'tests.apps.no_such_module'"
    )
