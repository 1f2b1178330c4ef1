"""A FastAPI app with the dashboard mounted twice, over a SQLite broker.

``TASKFLOW_TEST_SQLITE`` names the database file the test shares with it.
``/tasks`` is the dashboard, ``/ro`` the same read-only, and ``broker``
serves ``taskflow dashboard tests.apps.dashboard_app:broker``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.dashboard import Dashboard

broker = SQLiteBroker(os.environ.get("TASKFLOW_TEST_SQLITE", "dashboard.sqlite3"))


@broker.actor(queue="emails", max_retries=0)
async def send_email(to: str, password: str = "") -> str:
    """Records the address it was given."""
    return to


def masked(message: object) -> str:
    """Show the address, never the password."""
    args = getattr(message, "args", ())
    return ", ".join(repr(a) for a in args) + ", password=***"


app = FastAPI()
app.mount("/tasks", Dashboard(broker, formatter=masked, refresh=0.3))
app.mount("/ro", Dashboard(broker, read_only=True, refresh=0.3))
