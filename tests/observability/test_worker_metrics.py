"""``taskflow worker --metrics-port``: one endpoint for the worker tree, scraped by Prometheus."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from tests.apps import obs_app
from tests.apps.redis_app import delete_namespace, free_port
from tests.cli.procs import REPO, WorkerCli, holds_within
from tests.observability.prom import PrometheusServer

pytestmark = pytest.mark.slow

APP = "tests.apps.obs_app:broker"
StartWorker = Callable[..., WorkerCli]


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    name = f"tf-obs-{uuid.uuid4().hex[:12]}"
    yield name
    delete_namespace(redis_url, name)


def send(redis_url: str, namespace: str, **counts: int) -> None:
    """Send ``counts[actor]`` messages to each actor, then wait until the queue drained."""

    async def main() -> None:
        async with obs_app.build(redis_url, namespace) as broker:
            for actor, count in counts.items():
                await broker.actors[actor].send_many([() for _ in range(count)])
            await broker.join(obs_app.QUEUE, timeout=20)

    anyio.run(main)


def test_prometheus_scrapes_exact_sums_across_a_killed_child(
    worker_cli: StartWorker, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    port = free_port(19200, 19300)
    cli = worker_cli(
        APP,
        *("--processes", "2", "--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
        *("--metrics-interval", "0.2", "--concurrency", "4"),
        env={obs_app.URL_ENV: redis_url, obs_app.NAMESPACE_ENV: namespace},
    )
    first = cli.wait_for_pids(2)
    prometheus = PrometheusServer(tmp_path, [f"127.0.0.1:{port}"])
    try:
        # Given: work spread over both children, with retries and dead letters.
        send(redis_url, namespace, ok=40, flaky=1, broken=1, refuse=1)

        def total(metric: str, **labels: str) -> str:
            selector = ",".join(f'{k}="{v}"' for k, v in {"queue": "obs", **labels}.items())
            return f"sum({metric}{{{selector}}})"

        prometheus.wait_for(total("taskflow_messages_total", actor="ok"), 40)
        prometheus.wait_for(total("taskflow_messages_total", actor="flaky"), 3)
        prometheus.wait_for(total("taskflow_message_errors_total"), 2 + 2 + 1)
        prometheus.wait_for(total("taskflow_message_retries_total"), 2 + 1)
        prometheus.wait_for(
            total("taskflow_message_dead_letters_total", reason="max_retries_exceeded"), 1
        )
        prometheus.wait_for(total("taskflow_message_dead_letters_total", reason="rejected"), 1)
        prometheus.wait_for(total("taskflow_queue_messages", state="dead"), 2)
        prometheus.wait_for(total("taskflow_message_duration_seconds_count", actor="ok"), 40)
        prometheus.wait_for('count(up{job="taskflow"} == 1)', 1)  # one endpoint for the tree
        # Both children did work, so the sums above really are sums.
        assert cli.pids("ran") == first
        check_dashboard(prometheus)

        # When: a child is SIGKILLed and replaced.
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        replacement = cli.wait_for_pids(3) - first
        assert len(replacement) == 1
        cli.wait_for_log(f"(pid {victim}) was killed by SIGKILL")
        send(redis_url, namespace, ok=30)

        # Expect: the dead child's counts stay and nothing is counted twice.
        prometheus.wait_for(total("taskflow_messages_total", actor="ok"), 70)
        prometheus.wait_for(total("taskflow_message_retries_total"), 3)
        prometheus.wait_for(total("taskflow_messages_in_progress"), 0)
    finally:
        prometheus.stop()
    cli.signal(signal.SIGTERM)
    assert cli.wait(timeout=20) == 0
    [directory] = re.findall(r"/metrics \(files in (\S+)\)", cli.output())
    assert not Path(directory).exists()  # a private directory per run, removed at exit


def check_dashboard(prometheus: PrometheusServer) -> None:
    """Every query of the example Grafana dashboard is valid PromQL over what the worker exports."""
    dashboard = json.loads((REPO / "examples/grafana/taskflow-dashboard.json").read_text())
    no_data_yet = {"Messages sent per second"}  # the worker sends nothing
    expected = {p["title"] for p in dashboard["panels"]} - no_data_yet

    def answered() -> set[str]:
        titles = set()
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in (
                    ("$__rate_interval", "1m"),
                    ("$queue", ".*"),
                    ("$job", ".*"),
                ):
                    expr = expr.replace(variable, value)
                if prometheus.query(expr):  # raises on an invalid query
                    titles.add(panel["title"])
        return titles

    # Rates need two samples of a series: a few scrapes.
    if not holds_within(lambda: answered() == expected, 20):
        raise AssertionError(f"no data in {sorted(expected - answered())}")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from taskflow.cli import main; main()", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_prometheus_client_says_what_to_install() -> None:
    blocked = (
        "import sys; sys.modules['prometheus_client'] = None; from taskflow.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked, "worker", APP, "--metrics-port", "9191"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "Error: --metrics-port needs prometheus-client: pip install 'taskflow-aio[prometheus]'"
    ]


def test_a_metrics_port_in_use_is_one_line_and_exit_2(redis_url: str, namespace: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(
            "worker",
            APP,
            *("--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
            env={obs_app.URL_ENV: redis_url, obs_app.NAMESPACE_ENV: namespace},
        )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: cannot serve metrics on 127.0.0.1:{port}: ")


def test_directories_of_dead_supervisors_are_removed(tmp_path: Path) -> None:
    from taskflow.cli.metrics import DIRECTORY_PREFIX, remove_stale_directories

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"{DIRECTORY_PREFIX}{gone.pid}-abc"
    live = tmp_path / f"{DIRECTORY_PREFIX}{os.getpid()}-def"
    other = tmp_path / "taskflow-metrics-notapid"
    for path in (stale, live, other):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"")

    remove_stale_directories(str(tmp_path))

    assert not stale.exists()
    assert live.exists() and other.exists()
