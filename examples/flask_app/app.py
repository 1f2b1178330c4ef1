"""The Flask example: sync views that send with ``send_sync``, a taskflow worker that runs them.

Run from the repository root (see README.md beside this file)::

    flask --app examples.flask_app.app taskflow worker
    flask --app examples.flask_app.app run --with-threads      # or gunicorn --threads

Settings come from the environment, read by both processes:

* ``TASKFLOW_BROKER_URL``: the broker (default ``sqlite:///taskflow.sqlite3``);
* ``TASKFLOW_NAMESPACE``: for Redis, a key prefix of this app's own;
* ``GREETINGS_LOG``: the file each greeting is appended to (default ``greetings.log``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, request

from taskflow.integrations.flask import Taskflow

app = Flask(__name__)
app.config["TASKFLOW_BROKER_URL"] = os.environ.get(
    "TASKFLOW_BROKER_URL", "sqlite:///taskflow.sqlite3"
)
if namespace := os.environ.get("TASKFLOW_NAMESPACE"):
    app.config["TASKFLOW_BROKER_OPTIONS"] = {"namespace": namespace}
tasks = Taskflow(app)


@tasks.actor(queue="greetings", store_results=True)
def greet(name: str) -> str:
    """Greet ``name``: a line in the greetings log, and the greeting as the result."""
    line = f"hello {name}"
    with Path(os.environ.get("GREETINGS_LOG", "greetings.log")).open("a") as log:
        log.write(f"{line} {os.getpid()}\n")
    return line


@app.post("/greetings")
def create_greeting() -> dict[str, Any]:
    """Send ``greet``; with ``wait=1`` wait for the worker's result too."""
    message = greet.send_sync(request.form["name"])
    result = message.result_sync(timeout=20) if request.form.get("wait") == "1" else None
    return {"id": message.id, "result": result}
