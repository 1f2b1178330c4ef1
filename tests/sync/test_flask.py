"""The Flask example for real: a threaded server (Flask's own, and gunicorn with threads) and ``flask taskflow worker``.

On the embedded SQLite broker and on Redis: 200 requests in flight at once,
each view sending with ``send_sync``; every job runs exactly once.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from taskflow.brokers.memory import MemoryBroker
from tests.sync.servers import (
    Proc,
    Target,
    free_port,
    make_target,
    post_all,
    wait_for_http,
    wait_until,
)

pytestmark = pytest.mark.slow  # real servers and worker processes

flask = pytest.importorskip("flask")

from taskflow.integrations.flask import Taskflow  # noqa: E402 - needs flask

REPO = Path(__file__).resolve().parents[2]
APP = "examples.flask_app.app"


@dataclass
class Site:
    target: Target
    base: str
    log: Path
    worker: Proc
    web: Proc

    def greeted(self) -> Counter[str]:
        if not self.log.exists():
            return Counter()
        return Counter(line.split()[1] for line in self.log.read_text().splitlines() if line)


def _server(kind: str, port: int) -> list[str]:
    if kind == "flask":
        return ["-m", "flask", "--app", APP, "run", "--with-threads", "--port", str(port)]
    return [
        *("-m", "gunicorn", f"{APP}:app", "--preload", "--workers", "2", "--threads", "16"),
        *("--bind", f"127.0.0.1:{port}", "--no-control-socket"),
    ]


@pytest.fixture(
    scope="module",
    params=[("flask", "sqlite"), ("gunicorn", "sqlite"), ("flask", "redis"), ("gunicorn", "redis")],
)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    server, kind = request.param
    directory = tmp_path_factory.mktemp(f"flask-{server}-{kind}")
    with make_target(kind, directory) as target:
        log = directory / "greetings.log"
        env = {**target.env, "GREETINGS_LOG": str(log)}
        worker = Proc(
            [
                "-m",
                "flask",
                "--app",
                APP,
                "taskflow",
                "worker",
                "--concurrency",
                "50",
                "--shutdown-timeout",
                "5",
            ],
            REPO,
            directory / "worker.log",
            env,
        )
        port = free_port()
        web = Proc(_server(server, port), REPO, directory / "web.log", env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(base, web)
            yield Site(target, base, log, worker, web)
        finally:
            web_status = web.stop()
            worker_status = worker.stop()
        assert worker_status == 0, worker.output()[-3000:]
        # Flask's development server has no SIGTERM handler: it dies of the signal.
        assert web_status == (-signal.SIGTERM if server == "flask" else 0), web.output()[-3000:]


def test_200_requests_at_once_each_job_runs_once(site: Site) -> None:
    names = [f"{uuid.uuid4().hex[:8]}-{i}" for i in range(200)]

    responses = asyncio.run(post_all(site.base, [("/greetings", {"name": n}) for n in names]))

    assert [r.status_code for r in responses] == [200] * 200, site.web.output()[-3000:]
    assert len({r.json()["id"] for r in responses}) == 200
    wait_until(lambda: sum(site.greeted()[n] for n in names) >= 200, 60, "every greeting")
    broker = site.target.broker()
    from taskflow import _sync

    _sync.run(broker, lambda: broker.join("greetings", timeout=30), sync_form="", await_form="")
    broker.close_sync()
    greeted = site.greeted()
    assert {n: greeted[n] for n in names} == dict.fromkeys(names, 1)


def test_a_view_waits_for_the_result(site: Site) -> None:
    answer = httpx.post(f"{site.base}/greetings", data={"name": "ann", "wait": "1"}, timeout=30)
    assert answer.json()["result"] == "hello ann"


def test_actors_declared_before_init_app_move_to_the_apps_broker(tmp_path: Path) -> None:
    tasks = Taskflow()

    @tasks.actor(queue="q", max_retries=1)
    def early(x: int) -> int:
        return x

    with pytest.raises(RuntimeError, match="init_app"):
        tasks.broker  # noqa: B018 - the property raises
    app = flask.Flask("t")
    app.config["TASKFLOW_BROKER_URL"] = f"sqlite:///{tmp_path / 'b.sqlite3'}"
    tasks.init_app(app)

    assert early.broker is tasks.broker and tasks.broker.actors["early"] is early
    assert not isinstance(tasks.broker, MemoryBroker)
    assert app.extensions["taskflow"] is tasks
    assert "taskflow" in app.cli.commands
    message = early.send_sync(3)
    assert message.queue == "q"
    tasks.broker.close_sync()
