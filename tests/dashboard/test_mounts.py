"""The dashboard mounted beyond FastAPI (Flask through a2wsgi, Django's ASGI app), and its hooks."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.requests import Request

from taskflow.brokers.memory import MemoryBroker
from taskflow.dashboard import Dashboard
from tests.dashboard.conftest import free_port, serve

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture
def broker() -> Iterator[MemoryBroker]:
    broker = MemoryBroker()

    @broker.actor(queue="emails")
    async def send_email(to: str) -> None: ...

    # In a thread: a browser test of this session may hold this thread's loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(anyio.run, send_email.send, "<b>x@example.com</b>").result(timeout=10)
    yield broker


def test_flask_through_a2wsgi(broker: MemoryBroker) -> None:
    from a2wsgi import ASGIMiddleware
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    app = Flask(__name__)
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        {"/tasks": ASGIMiddleware(Dashboard(broker))},  # type: ignore[dict-item, arg-type]
    )
    page = app.test_client().get("/tasks/")
    assert page.status_code == 200
    assert 'href="/tasks/queues/emails"' in page.text


def test_django_asgi_routes_a_prefix(tmp_path: Path) -> None:
    db = tmp_path / "dashboard.sqlite3"
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "tests.apps.dashboard_django:application"]
    for base in serve([*command, "--port", str(port), "--log-level", "warning"], db, port):
        page = httpx.get(f"{base}/tasks/", timeout=10)
        assert page.status_code == 200 and "<h1>Queues</h1>" in page.text
        assert 'href="/tasks/workers"' in page.text
        assert httpx.get(f"{base}/hello", timeout=10).text == "hello from django"


def test_the_auth_hook_refuses_before_anything_else(broker: MemoryBroker) -> None:
    def staff_only(request: Request) -> bool:
        return request.headers.get("x-user") == "staff"

    client = TestClient(Dashboard(broker, auth=staff_only))
    assert client.get("/").status_code == 403
    assert client.post("/queues/emails/purge-dead").status_code == 403
    assert client.get("/", headers={"x-user": "staff"}).status_code == 200


def test_actions_need_the_csrf_token_and_read_only_refuses_them(broker: MemoryBroker) -> None:
    client = TestClient(Dashboard(broker))
    client.get("/")
    token = client.cookies["taskflow_csrf"]
    assert client.post("/queues/emails/requeue").status_code == 403
    wrong = client.post("/queues/emails/requeue", headers={"X-CSRF-Token": "x" + token})
    assert wrong.status_code == 403
    ok = client.post("/queues/emails/requeue", headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and ok.headers["HX-Redirect"] == "/queues/emails?state=dead"

    read_only = TestClient(Dashboard(broker, read_only=True))
    read_only.get("/")
    token = read_only.cookies["taskflow_csrf"]
    refused = read_only.post("/queues/emails/purge-dead", headers={"X-CSRF-Token": token})
    assert refused.status_code == 403
    assert "<button" not in read_only.get("/queues/emails?state=dead").text
