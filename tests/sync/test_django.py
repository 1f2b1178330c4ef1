"""The Django example project for real: gunicorn (threads, ``--preload``) and ``manage.py taskflow worker``.

On the embedded SQLite broker and on Redis: 200 requests in flight at once
whose views call ``send_on_commit`` (a third of them roll back) and
``send_sync``; every committed job runs once, no rolled-back one ever runs;
``django.tasks`` tasks run on the taskflow worker through ``TaskflowBackend``
with their status and return value; ``manage.py taskflow queues`` and
``dlq`` see the project's queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

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

pytest.importorskip("django")

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "django_app"


@dataclass
class Site:
    target: Target
    base: str
    db: Path
    env: dict[str, str]
    worker: Proc
    web: Proc

    def events(self, kind: str) -> Counter[str]:
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as conn:
            rows = conn.execute("SELECT ref FROM shop_event WHERE kind = ?", (kind,)).fetchall()
        return Counter(ref for (ref,) in rows)

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=PROJECT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp(f"django-{request.param}")
    with make_target(request.param, directory) as target:
        db = directory / "db.sqlite3"
        env = {
            **target.env,
            "DJANGO_DB_PATH": str(db),
            "DJANGO_SETTINGS_MODULE": "project.settings",
        }
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v", "0"],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert migrate.returncode == 0, migrate.stderr
        worker = Proc(
            ["manage.py", "taskflow", "worker", "--concurrency", "50", "--shutdown-timeout", "5"],
            PROJECT,
            directory / "worker.log",
            env,
        )
        port = free_port()
        web = Proc(
            [
                *("-m", "gunicorn", "project.wsgi", "--preload", "--workers", "2"),
                *("--threads", "16", "--bind", f"127.0.0.1:{port}", "--no-control-socket"),
            ],
            PROJECT,
            directory / "gunicorn.log",
            env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{base}/orders/none", web)
            yield Site(target, base, db, env, worker, web)
        finally:
            web_status = web.stop()
            worker_status = worker.stop()
        assert (web_status, worker_status) == (0, 0), worker.output()[-3000:]


def test_200_requests_at_once_send_on_commit_and_send_sync(site: Site) -> None:
    run = uuid.uuid4().hex[:8]
    orders = [(f"{run}-o{i}", i % 3 == 0) for i in range(150)]  # every third one rolls back
    pings = [f"{run}-p{i}" for i in range(50)]
    requests = [("/orders", {"ref": ref, "rollback": "1" if back else "0"}) for ref, back in orders]
    requests += [("/pings", {"ref": ref}) for ref in pings]

    responses = asyncio.run(post_all(site.base, requests))

    assert [r.status_code for r in responses] == [200] * 200, site.web.output()[-3000:]
    committed = {ref for ref, back in orders if not back}
    assert len(committed) == 100
    wait_until(
        lambda: (
            sum(site.events("confirm").values()) >= 100 and sum(site.events("ping").values()) >= 50
        ),
        60,
        "every job to run",
    )
    broker = site.target.broker()
    from taskflow import _sync

    for queue in ("orders", "pings"):
        _sync.run(broker, lambda q=queue: broker.join(q, timeout=30), sync_form="", await_form="")  # type: ignore[misc]
    broker.close_sync()
    confirmed = site.events("confirm")
    assert set(confirmed) == committed  # no rolled-back order was ever sent
    assert set(confirmed.values()) == {1}  # each committed one ran once
    assert site.events("ping") == Counter(dict.fromkeys(pings, 1))
    order = httpx.get(f"{site.base}/orders/{orders[1][0]}").json()
    assert order == {"ref": orders[1][0], "confirmations": 1}
    assert httpx.get(f"{site.base}/orders/{orders[0][0]}").json()["confirmations"] is None


def test_send_sync_then_result_sync_from_a_view(site: Site) -> None:
    ref = uuid.uuid4().hex[:8]
    answer = httpx.post(f"{site.base}/pings", data={"ref": ref, "wait": "1"}, timeout=30).json()
    assert answer["answer"] == f"pong {ref}"


def _report(site: Site, n: int) -> dict[str, object]:
    created = httpx.post(f"{site.base}/reports", data={"n": str(n)}, timeout=30).json()
    assert created["status"] == "READY"
    result: dict[str, object] = {}

    def finished() -> bool:
        nonlocal result
        result = httpx.get(f"{site.base}/reports/{created['id']}", timeout=30).json()
        return result["status"] in ("SUCCESSFUL", "FAILED")

    wait_until(finished, 30, "the report task to finish")
    return result


def test_django_tasks_run_on_the_taskflow_worker(site: Site) -> None:
    ok = _report(site, 10)
    assert ok["status"] == "SUCCESSFUL"
    assert ok["value"] == {"n": 10, "sum_of_squares": 285}
    assert ok["errors"] == [] and ok["workers"] == 1
    failed = _report(site, -1)
    assert failed["status"] == "FAILED"
    assert failed["errors"] == ["builtins.ValueError"]


def test_manage_py_taskflow_queues_and_dlq(site: Site) -> None:
    _report(site, -2)  # a failed task: dead-lettered, no retry
    queues = site.manage("taskflow", "queues")
    assert queues.returncode == 0, queues.stderr
    names = {line.split()[0] for line in queues.stdout.splitlines()[1:]}
    assert {"default", "orders", "pings", "reports"} <= names
    letters = site.manage("taskflow", "dlq", "list", "--queue", "reports")
    assert letters.returncode == 0, letters.stderr
    assert "django.tasks:reports" in letters.stdout
    wrong = site.manage("taskflow", "dlq", "list")
    assert wrong.returncode == 2  # a CLI mistake: exit status 2, as with the taskflow CLI
    start = time.monotonic()
    help_text = site.manage("taskflow", "worker", "--help")
    assert "--processes" in help_text.stdout and "--shutdown-timeout" in help_text.stdout
    assert time.monotonic() - start < 30


SHELL = """
import datetime as dt, json
from django.utils import timezone
from shop.tasks import build_report
from taskflow.integrations.django import broker, TaskflowBackend
from taskflow import _sync
later = build_report.using(run_after=timezone.now() + dt.timedelta(hours=1), priority=5).enqueue(3)
now = build_report.enqueue(4)
stats = _sync.run(broker, lambda: broker.stats("reports"), sync_form="", await_form="")
try:
    build_report.get_result("no-such-id")
    missing = "found"
except Exception as exc:
    missing = type(exc).__name__
result = build_report.get_result(later.id)
print(json.dumps({
    "backend": type(build_report.get_backend()) is TaskflowBackend,
    "status": [later.status, now.status, result.status],
    "args": result.args, "run_after": result.task.run_after is None,
    "stats": [stats.ready, stats.delayed], "missing": missing,
}))
"""


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_the_tasks_backend_keeps_ready_and_delayed_tasks_until_a_worker_runs_them(
    kind: str, tmp_path: Path
) -> None:
    with make_target(kind, tmp_path) as target:
        env = {**target.env, "DJANGO_DB_PATH": str(tmp_path / "db.sqlite3")}
        shell = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", SHELL],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert shell.returncode == 0, shell.stderr
    assert json.loads(shell.stdout.splitlines()[-1]) == {
        "backend": True,
        "status": ["READY", "READY", "READY"],
        "args": [3],
        "run_after": True,  # the task as declared; run_after was for this call
        "stats": [1, 1],  # run_after became a delay
        "missing": "TaskResultDoesNotExist",
    }
