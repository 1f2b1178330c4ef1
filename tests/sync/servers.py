"""Fixtures shared by the sync-producer, Django and Flask tests: a broker per server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import taskflow
from tests.apps.redis_app import delete_namespace
from tests.apps.sync_app import read_ledger
from tests.conftest import REDIS_URL, require_service


@dataclass
class Target:
    """Where a test's messages go: a URL, a Redis namespace, a ledger of the jobs that ran."""

    url: str
    namespace: str
    ledger: Path
    env: dict[str, str] = field(default_factory=dict)

    def broker(self, **options: Any) -> taskflow.Broker:
        if self.namespace:
            options["namespace"] = self.namespace
        return taskflow.broker_from_url(self.url, results=True, **options)

    def ran(self) -> list[str]:
        return read_ledger(self.ledger)


@contextlib.contextmanager
def make_target(kind: str, directory: Path) -> Iterator[Target]:
    """A SQLite file in ``directory``, or a namespace of its own on the test Redis."""
    ledger = directory / "ledger"
    ledger.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TASKFLOW_LEDGER": str(ledger)}
    env.pop("TASKFLOW_NAMESPACE", None)
    if kind == "sqlite":
        url = f"sqlite:///{directory / 'broker.sqlite3'}"
        yield Target(url, "", ledger, {**env, "TASKFLOW_BROKER_URL": url})
        return
    url = require_service("Redis", REDIS_URL, 6379)
    namespace = f"tf-sync-{uuid.uuid4().hex[:12]}"
    env = {**env, "TASKFLOW_BROKER_URL": url, "TASKFLOW_NAMESPACE": namespace}
    try:
        yield Target(url, namespace, ledger, env)
    finally:
        delete_namespace(url, namespace)


@pytest.fixture(params=["sqlite", "redis"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A broker of the test's own: on SQLite, then on Redis."""
    with make_target(request.param, tmp_path) as made:
        yield made


class Proc:
    """A process of the system under test, its output in a log file, stopped with SIGTERM."""

    def __init__(self, args: list[str], cwd: Path, log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as a service manager would; SIGKILL the group if it does not stop in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
            raise AssertionError(f"{self.log.name} did not stop within {timeout} s") from None

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(5)


def wait_for_http(url: str, proc: Proc, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers (any status); fail at once if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.log.name} exited:\n{proc.output()[-3000:]}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{proc.output()[-3000:]}")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


async def post_all(base: str, requests: list[tuple[str, dict[str, str]]]) -> list[httpx.Response]:
    """POST every request at once (all in flight together) and return the responses in order."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60.0) as client:
        return list(
            await asyncio.gather(*(client.post(path, data=data) for path, data in requests))
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
