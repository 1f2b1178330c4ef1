"""A Django project's ASGI application routing ``/tasks`` to the dashboard (SQLite broker).

``TASKFLOW_TEST_SQLITE`` names the database file; serve with
``uvicorn tests.apps.dashboard_django:application``.
"""

from __future__ import annotations

import os

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path

from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.dashboard import Dashboard


def hello(request: HttpRequest) -> HttpResponse:
    """A page of the Django project itself."""
    return HttpResponse("hello from django")


urlpatterns = [path("hello", hello)]
settings.configure(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="test", DEBUG=False)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402  (after settings)
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Mount  # noqa: E402

broker = SQLiteBroker(os.environ.get("TASKFLOW_TEST_SQLITE", "dashboard.sqlite3"))
application = Starlette(
    routes=[
        Mount("/tasks", app=Dashboard(broker)),
        Mount("/", app=get_asgi_application()),  # type: ignore[arg-type]
    ]
)
