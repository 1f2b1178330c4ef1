"""``taskflow worker`` as real processes: children, restarts, signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from taskflow.cli._signals import ECHO_WINDOW
from tests.apps.cli_app import MARKERS_ENV
from tests.cli.procs import APP, REPO, WorkerCli, alive, busy_env, parent_of, wait_until

pytestmark = pytest.mark.slow

StartWorker = Callable[..., WorkerCli]


def test_processes_2_runs_two_children_of_the_parent(worker_cli: StartWorker) -> None:
    cli = worker_cli(APP, "--processes", "2", "--queues", "emails", "--concurrency", "7")

    children = cli.wait_for_pids(2)

    assert len(children) == 2
    assert cli.pid not in children
    assert {parent_of(pid) for pid in children} == {cli.pid}
    for pid in children:
        cli.wait_for_log(f"[{pid}] INFO taskflow.worker: worker {pid}-")
    assert "consuming emails (concurrency 7, threads 8)" in cli.output()


def test_sigterm_stops_every_child_gracefully_and_exits_0(worker_cli: StartWorker) -> None:
    cli = worker_cli(APP, "--processes", "2")
    children = cli.wait_for_pids(2)

    cli.signal(signal.SIGTERM)

    assert cli.wait(timeout=10) == 0
    assert cli.pids("stopped") == children  # each worker ran its shutdown
    assert not any(alive(pid) for pid in children)


def test_a_killed_child_is_replaced(worker_cli: StartWorker) -> None:
    cli = worker_cli(APP, "--processes", "2")
    first = cli.wait_for_pids(2)
    victim = min(first)

    os.kill(victim, signal.SIGKILL)

    replacement = cli.wait_for_pids(3) - first
    assert len(replacement) == 1
    assert parent_of(replacement.pop()) == cli.pid
    assert not alive(victim)
    assert f"(pid {victim}) was killed by SIGKILL; restarting it in" in cli.output()
    cli.signal(signal.SIGTERM)
    assert cli.wait(timeout=10) == 0


def test_running_work_gets_the_shutdown_timeout_then_is_requeued(
    worker_cli: StartWorker,
) -> None:
    cli = worker_cli(APP, "--shutdown-timeout", "0.5", env=busy_env())
    (child,) = cli.wait_for_pids(1, "busy")

    cli.signal(signal.SIGTERM)

    assert cli.wait(timeout=10) == 0
    assert "shutdown timeout of 0.5 s passed; requeueing running messages" in cli.output()
    assert cli.pids("stopped") == {child}


def test_a_sync_actor_stuck_past_the_shutdown_timeout_does_not_hold_the_exit(
    worker_cli: StartWorker,
) -> None:
    cli = worker_cli(APP, "--shutdown-timeout", "0.5", env=busy_env("sync"))
    (child,) = cli.wait_for_pids(1, "busy")

    cli.signal(signal.SIGTERM)

    assert cli.wait(timeout=5) == 0
    assert "leaving 1 sync actor thread(s) behind at exit" in cli.output()
    assert cli.pids("stopped") == {child}
    assert not alive(child)


def test_a_second_signal_kills_the_children_at_once(worker_cli: StartWorker) -> None:
    # Given children busy with an hour-long message and a long shutdown timeout
    cli = worker_cli(APP, "--processes", "2", "--shutdown-timeout", "60", env=busy_env())
    children = cli.wait_for_pids(2, "busy")
    # When a first SIGTERM has started a graceful stop that is waiting on that work
    cli.signal(signal.SIGTERM)
    first = time.monotonic()
    for pid in children:
        cli.wait_for_log(f"[{pid}] INFO taskflow.cli.child: received SIGTERM; stopping gracefully")
    assert cli.process.poll() is None
    # Expect a second signal, past the echo window of the first, to end everything at once
    time.sleep(max(first + ECHO_WINDOW + 0.1 - time.monotonic(), 0.0))
    cli.signal(signal.SIGINT)
    assert cli.wait(timeout=5) == 1
    assert "received SIGINT again; killing the children" in cli.output()
    assert not any(alive(pid) for pid in children)
    assert cli.pids("stopped") == set()  # killed, not stopped


def test_a_signal_sent_to_the_pid_then_its_group_is_one_graceful_stop(
    worker_cli: StartWorker,
) -> None:
    # Given children busy with work that outlasts the shutdown timeout
    cli = worker_cli(APP, "--processes", "2", "--shutdown-timeout", "1", env=busy_env())
    children = cli.wait_for_pids(2, "busy")
    # When SIGTERM comes as GNU timeout, Kubernetes and systemd send it: to the
    # pid, then (once the first copy was handled) to the whole process group
    cli.signal(signal.SIGTERM)
    cli.wait_for_log("received SIGTERM; stopping (send it again to kill at once)")
    os.killpg(cli.pid, signal.SIGTERM)
    # Expect one graceful stop: nothing killed, every child stopped and exited 0
    assert cli.wait(timeout=10) == 0
    assert "the same signal, still stopping gracefully" in cli.output()
    assert "killing the children" not in cli.output()
    assert cli.pids("stopped") == children
    for pid in children:
        assert f"(pid {pid}) exited with status 0" in cli.output()


def test_a_child_winding_down_is_not_killed_by_another_sigterm(
    worker_cli: StartWorker,
) -> None:
    # Given a child whose stop waits for a stuck sync actor's thread at exit
    cli = worker_cli(APP, "--shutdown-timeout", "0.3", env=busy_env("sync"))
    (child,) = cli.wait_for_pids(1, "busy")
    cli.signal(signal.SIGTERM)
    # the worker stopped; the process is on its way out
    wait_until(lambda: _worker_stopped(cli, child), 10, "the worker to stop")
    # When another SIGTERM reaches the child then
    os.kill(child, signal.SIGTERM)
    # Expect it to finish its exit, with status 0
    assert cli.wait(timeout=10) == 0
    assert f"child 1 (pid {child}) exited with status 0" in cli.output()


def _worker_stopped(cli: WorkerCli, pid: int) -> bool:
    prefix = f"[{pid}] INFO taskflow.worker: worker "
    return any(prefix in line and line.endswith(" stopped") for line in cli.output().splitlines())


def test_ctrl_c_to_the_process_group_is_one_graceful_stop(worker_cli: StartWorker) -> None:
    cli = worker_cli(APP, "--processes", "2")
    children = cli.wait_for_pids(2)

    os.killpg(cli.pid, signal.SIGINT)  # what a terminal does on Ctrl-C

    assert cli.wait(timeout=10) == 0
    assert cli.pids("stopped") == children
    assert cli.output().count("received SIGINT") == 1
    assert "KeyboardInterrupt" not in cli.output()


def test_children_stop_when_the_parent_is_killed(worker_cli: StartWorker) -> None:
    cli = worker_cli(APP, "--processes", "2")
    children = cli.wait_for_pids(2)

    os.kill(cli.pid, signal.SIGKILL)

    wait_until(lambda: cli.pids("stopped") == children, 10, "orphaned children to stop")
    wait_until(lambda: not any(alive(pid) for pid in children), 10, "orphans to exit")


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs GNU timeout")
def test_gnu_timeout_stops_the_tree_gracefully(tmp_path: Path) -> None:
    # GNU timeout signals the worker, then its whole process group.
    markers = tmp_path / "markers"
    markers.mkdir()
    done = subprocess.run(
        ["timeout", "--preserve-status", "-s", "TERM", "8", sys.executable, "-m", "taskflow"]
        + ["worker", APP, "--processes", "2", "--shutdown-timeout", "0.5"],
        cwd=REPO,
        env={**os.environ, MARKERS_ENV: str(markers), **busy_env()},
        capture_output=True,
        text=True,
        timeout=30,
    )
    started = {p.name.split("-")[1] for p in markers.glob("started-*")}
    stopped = {p.name.split("-")[1] for p in markers.glob("stopped-*")}
    assert done.returncode == 0, done.stderr
    assert stopped == started  # every child that started stopped gracefully
    assert "killing the children" not in done.stderr
