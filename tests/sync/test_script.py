"""A plain script, a real ``taskflow worker``, and forks, on SQLite and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integrations.stack import REPO, Process
from tests.sync.servers import Target

pytestmark = pytest.mark.slow  # real servers and worker processes

WORKER = [
    *("-m", "taskflow", "worker", "tests.apps.sync_app:broker"),
    *("--concurrency", "20", "--shutdown-timeout", "5"),
]


def test_a_plain_script_sends_reads_results_forks_and_closes_at_exit(
    target: Target, tmp_path: Path
) -> None:
    worker = Process(WORKER, tmp_path / "worker.log", target.env)
    script = subprocess.Popen(
        [sys.executable, "-m", "tests.apps.sync_script"],
        cwd=REPO,
        env=target.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its forked children too are killed if it hangs
    )
    try:
        stdout, stderr = script.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(script.pid, signal.SIGKILL)
        stdout, stderr = script.communicate()
    finally:
        status = worker.stop()
    assert script.returncode == 0, stderr + worker.output()
    lines = stdout.splitlines()
    assert lines[:8] == [
        "result 5",
        "many 380",
        "failed ValueError",
        "delayed 2 after True",
        "forked child exited 0",
        "multiprocessing children exited [0, 0, 0]",
        "parent after fork 42",
        "fork beside a running loop: child exited 0, parent got 10",
    ]
    # Closed once, by the parent, at exit: not by the forked children (theirs exit with _exit
    # or multiprocessing's os._exit, after their own work).
    assert lines[8:] == [f"closed at exit in {lines[8].split()[-1]}"]
    # Had the child closed the connections it inherited, the parent's loop would have lost
    # their sockets (its selector is shared across the fork) and its send would retry.
    assert "lost the connection" not in stderr
    assert status == 0
