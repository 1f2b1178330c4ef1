"""An example app running for real: its web server and its ``taskflow worker``, as processes.

Both are started from the repository root with the commands of the example's
README (on a loopback port of their own), against the broker named by
``TASKFLOW_BROKER_URL``; their output goes to log files in the test's
directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Example:
    name: str
    tasks: str
    jobs_path: str
    queue: str

    @property
    def directory(self) -> Path:
        return REPO / "examples" / f"{self.name}_app"

    def worker_command(self) -> list[str]:
        return [
            *("-m", "taskflow", "worker", self.tasks),
            *("--concurrency", "200", "--shutdown-timeout", "5"),
        ]

    def server_command(self, port: int) -> list[str]:
        if self.name == "fastapi":
            return [
                *("-m", "uvicorn", "examples.fastapi_app.app:app", "--host", "127.0.0.1"),
                *("--port", str(port), "--no-access-log"),
            ]
        return ["-m", "examples.aiohttp_app.app", "--host", "127.0.0.1", "--port", str(port)]


FASTAPI = Example("fastapi", "examples.fastapi_app.tasks:broker", "/jobs", "summaries")
AIOHTTP = Example("aiohttp", "examples.aiohttp_app.tasks:broker", "/reports", "reports")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO,
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


class Stack:
    """The web server and the worker of one example, on one broker."""

    def __init__(self, example: Example, broker_url: str, tmp: Path, namespace: str = "") -> None:
        self.example = example
        env = {**os.environ, "TASKFLOW_BROKER_URL": broker_url, "PYTHONUNBUFFERED": "1"}
        env.pop("TASKFLOW_NAMESPACE", None)
        if namespace:
            env["TASKFLOW_NAMESPACE"] = namespace
        self.worker = Process(example.worker_command(), tmp / f"{example.name}-worker.log", env)
        port = 0 if example.name == "fastapi" else free_port()
        self.server = Process(example.server_command(port), tmp / f"{example.name}-app.log", env)
        self.url = self._wait_for_url(port, timeout=20)

    def _wait_for_url(self, port: int, timeout: float) -> str:
        """The server's base URL, once it answers (uvicorn says which port it got for 0)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.popen.poll() is not None:
                break
            if port == 0:
                found = re.search(
                    r"Uvicorn running on http://127\.0\.0\.1:(\d+)", self.server.output()
                )
                if found:
                    port = int(found.group(1))
            if port:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"http://127.0.0.1:{port}/queue", timeout=2).status_code == 200:
                        return f"http://127.0.0.1:{port}"
            time.sleep(0.05)
        self.close()
        raise AssertionError(
            f"the {self.example.name} app did not come up:\n{self.server.output()}"
        )

    def stop(self) -> tuple[int, int]:
        """Stop the server and the worker gracefully; return their exit statuses."""
        return self.server.stop(), self.worker.stop()

    def close(self) -> None:
        for process in (self.server, self.worker):
            with contextlib.suppress(AssertionError):
                process.stop()


@contextlib.contextmanager
def running(example: Example, broker_url: str, tmp: Path, namespace: str = "") -> Iterator[Stack]:
    stack = Stack(example, broker_url, tmp, namespace)
    try:
        yield stack
    except BaseException:
        # Shown with the failure: what the server and the worker said.
        for process in (stack.server, stack.worker):
            print(f"--- {process.log.name} (last 4000 characters) ---")
            print(process.output()[-4000:])
        raise
    finally:
        stack.close()


def delete_redis_keys(url: str, namespace: str, job_ids: set[str]) -> None:
    """Delete every key of ``namespace``, and the results of ``job_ids``."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{namespace}*", count=1000))
        # RedisBroker(results=True) keeps results outside the broker's namespace.
        for job_id in job_ids:
            keys += [f"taskflow:result:{{{job_id}}}", f"taskflow:result:{{{job_id}}}:ready"]
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()
