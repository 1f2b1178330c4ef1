"""The dashboard mounted beyond FastAPI (Flask through a2wsgi, Django's ASGI app), and its hooks."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest
from starlette.requests import Request

from taskflow.brokers.memory import MemoryBroker
from taskflow.dashboard import Dashboard

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


def test_django_asgi_routes_a_prefix(broker: MemoryBroker) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="test")
        django.setup()
    from django.core.asgi import get_asgi_application
    from starlette.applications import Starlette
    from starlette.routing import Mount

    application = Starlette(
        routes=[Mount("/tasks", app=Dashboard(broker)), Mount("/", app=get_asgi_application())]  # type: ignore[arg-type]
    )
    with TestClient(application) as client:
        page = client.get("/tasks/queues/emails")
        assert page.status_code == 200
        assert "&lt;b&gt;x@example.com&lt;/b&gt;" in page.text  # escaped, as it is
        assert client.get("/elsewhere").status_code == 404  # Django's answer


urlpatterns: list[object] = []


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
