"""The typer app that gathers the commands."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from taskflow.cli.cancel import cancel
from taskflow.cli.cron import cron
from taskflow.cli.dashboard import dashboard
from taskflow.cli.dlq import dlq
from taskflow.cli.inspect import inspect
from taskflow.cli.queues import queues
from taskflow.cli.send import send
from taskflow.cli.worker import worker
from taskflow.cli.workers import workers

DISTRIBUTION = "taskflow-aio"
"""The name taskflow is installed under: ``pip install taskflow-aio``."""

app = typer.Typer(
    name="taskflow",
    help="taskflow: run workers and inspect queues.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def installed_version() -> str:
    """The installed version of the ``taskflow-aio`` distribution (``unknown`` when not installed)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"taskflow {installed_version()} ({DISTRIBUTION})")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """taskflow: run workers and inspect queues."""


app.command()(worker)
app.command()(queues)
app.command()(send)
app.command()(cancel)
app.command()(workers)
app.command()(inspect)
app.command()(dashboard)
app.add_typer(dlq)
app.add_typer(cron)
