"""``taskflow dashboard``: serve the web dashboard of a broker alone (uvicorn)."""

from __future__ import annotations

import importlib.util
from typing import Annotated

import typer

from taskflow.cli.errors import CliError
from taskflow.cli.loading import load_broker
from taskflow.cli.runtime import AppSpec, reporting_errors


def dashboard(
    app: AppSpec,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8181,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Show no action; refuse action requests.")
    ] = False,
) -> None:
    """Serve the dashboard of APP's broker on http://HOST:PORT/ until interrupted."""
    with reporting_errors():
        missing = [m for m in ("jinja2", "uvicorn") if importlib.util.find_spec(m) is None]
        if missing:
            raise CliError(
                f"the dashboard needs {', '.join(missing)}: pip install 'taskflow-aio[dashboard]'"
            )
        broker = load_broker(app)
    import uvicorn

    from taskflow.dashboard import Dashboard

    uvicorn.run(Dashboard(broker, read_only=read_only), host=host, port=port, log_level="info")
