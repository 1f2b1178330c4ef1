"""``taskflow inspect``: one message, wherever it is, as JSON."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import typer

from taskflow._inspection import MessageInfo
from taskflow.broker import Broker
from taskflow.cli.errors import CliError
from taskflow.cli.loading import load_broker
from taskflow.cli.runtime import AppSpec, connected, reporting_errors, run_async


def inspect(
    app: AppSpec,
    message_id: Annotated[str, typer.Argument(help="The id of the message.")],
) -> None:
    """Print one message (queue, state, actor, arguments, deliveries, lease, eta) as JSON."""
    with reporting_errors():
        info = run_async(_find, load_broker(app), app, message_id)
        if info is None:
            raise CliError(f"no message {message_id!r} in any queue")
    typer.echo(msgspec.json.format(msgspec.json.encode(describe(info)), indent=2).decode())


def describe(info: MessageInfo) -> dict[str, Any]:
    """The JSON view of a message: its stored fields without the raw bytes."""
    out = msgspec.to_builtins(info)
    del out["body"]
    return out  # type: ignore[no-any-return]


async def _find(broker: Broker, spec: str, message_id: str) -> MessageInfo | None:
    async with connected(broker, spec):
        try:
            return await broker.get_message(message_id)
        except NotImplementedError as exc:
            raise CliError(str(exc)) from None
