"""``taskflow cancel``: cancel a message wherever it is (queued, delayed or running)."""

from __future__ import annotations

from typing import Annotated

import typer

from taskflow.broker import Broker
from taskflow.cli.loading import load_broker
from taskflow.cli.runtime import AppSpec, connected, reporting_errors, run_async


def cancel(
    app: AppSpec,
    message_id: Annotated[str, typer.Argument(metavar="MESSAGE_ID", help="The message to cancel.")],
) -> None:
    """Cancel a message: it never runs, or stops on the worker that runs it."""
    with reporting_errors():
        run_async(_cancel, load_broker(app), app, message_id)
    typer.echo(f"cancelled {message_id}")


async def _cancel(broker: Broker, spec: str, message_id: str) -> None:
    async with connected(broker, spec):
        await broker.cancel(message_id)
