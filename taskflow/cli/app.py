"""The typer app that gathers the commands."""

from __future__ import annotations

import typer

from taskflow.cli.dlq import dlq
from taskflow.cli.queues import queues
from taskflow.cli.send import send
from taskflow.cli.worker import worker

app = typer.Typer(
    name="taskflow",
    help="taskflow: run workers and inspect queues.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(worker)
app.command()(queues)
app.command()(send)
app.add_typer(dlq)
