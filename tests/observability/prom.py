"""A private Prometheus server for the metrics tests (Debian's ``prometheus`` package).

Started on a free loopback port with a configuration and a data directory
the test writes; the system's own Prometheus service, if any, is never
touched. When the binary is missing it is installed with apt-get (as
``.ci/run`` does), without starting the packaged service.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.apps.redis_app import free_port


def prometheus_binary() -> str:
    """The path of ``prometheus``, installed with apt-get when missing; else skip or fail."""
    found = shutil.which("prometheus")
    if found is None and shutil.which("apt-get") is not None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "prometheus"], env=env, check=False, timeout=600
        )
        found = shutil.which("prometheus")
    if found is None:
        message = "the prometheus server is not installed (apt-get install prometheus)"
        if os.environ.get("TASKFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


class PrometheusServer:
    """One ``prometheus`` process scraping ``targets`` every ``interval`` seconds."""

    def __init__(self, directory: Path, targets: list[str], interval: float = 1.0) -> None:
        self.directory = directory
        self.port = free_port(19090, 19190)
        config = directory / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": f"{int(interval * 1000)}ms"},
                    "scrape_configs": [
                        {
                            "job_name": "taskflow",
                            "scrape_interval": f"{int(interval * 1000)}ms",
                            "scrape_timeout": f"{int(interval * 1000)}ms",
                            "static_configs": [{"targets": targets}],
                        }
                    ],
                }
            )
        )
        self.log = directory / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
            return reply.read()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self._get("/-/ready")
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(
                        f"prometheus did not start:\n{self.log.read_text()}"
                    ) from None
                time.sleep(0.1)

    def query(self, promql: str) -> dict[str, float]:
        """Evaluate ``promql`` now: each series' labels (as ``k=v,...``) to its value."""
        reply = json.loads(self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert reply["status"] == "success", reply
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
            for r in reply["data"]["result"]
        }

    def scalar(self, promql: str) -> float | None:
        """The value of a query with one series, or None while it has none."""
        found = self.query(promql)
        assert len(found) <= 1, found
        return next(iter(found.values()), None)

    def wait_for(self, promql: str, expected: float, timeout: float = 20.0) -> None:
        """Wait until ``promql`` evaluates to ``expected``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.scalar(promql)
            if seen == expected:
                return
            time.sleep(0.2)
        raise AssertionError(f"{promql} is {seen}, expected {expected}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
