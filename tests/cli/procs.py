"""Helpers for CLI tests that run ``taskflow worker`` as real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.apps.cli_app import BUSY_ENV, MARKERS_ENV

REPO = Path(__file__).resolve().parents[2]
APP = "tests.apps.cli_app:broker"


def holds_within(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` every 50 ms for up to ``timeout`` seconds; return whether it held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    if not holds_within(predicate, timeout):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def proc_status(pid: int) -> dict[str, str]:
    """The fields of /proc/<pid>/status, or {} when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead)."""
    state = proc_status(pid).get("State", "")
    return bool(state) and not state.startswith("Z")


def parent_of(pid: int) -> int:
    return int(proc_status(pid)["PPid"].strip())


class WorkerCli:
    """A ``python -m taskflow worker`` parent process, its log and its children's markers."""

    def __init__(self, markers: Path, log: Path, args: list[str], env: dict[str, str]) -> None:
        self.markers = markers
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "taskflow", "worker", *args],
                cwd=REPO,
                env={**os.environ, MARKERS_ENV: str(markers), **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, like a shell job
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self, kind: str = "started") -> set[int]:
        return {int(p.name.rsplit("-", 1)[1]) for p in self.markers.glob(f"{kind}-*")}

    def wait_for_pids(self, count: int, kind: str = "started", timeout: float = 10.0) -> set[int]:
        wait_until(lambda: len(self.pids(kind)) >= count, timeout, f"{count} {kind} markers")
        return self.pids(kind)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        wait_until(lambda: text in self.output(), timeout, f"{text!r} in the log")

    def signal(self, signum: signal.Signals) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker did not exit within {timeout} s; log:\n{self.output()}"
            ) from None

    def kill_everything(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(10)


def busy_env(kind: str = "async") -> dict[str, str]:
    """Environment making each worker run one hour-long ``async`` or ``sync`` actor."""
    return {BUSY_ENV: kind}
