"""``taskflow send``: send one message to an actor from the shell."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import typer

from taskflow.broker import Broker
from taskflow.cli.loading import CliError, load_broker
from taskflow.cli.runtime import AppSpec, connected, reporting_errors, run_async


class _Call(msgspec.Struct, frozen=True):
    actor: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    delay: float | None
    priority: int | None


def send(
    app: AppSpec,
    actor: Annotated[str, typer.Argument(help="The actor's name.")],
    args: Annotated[str, typer.Option("--args", help="Positional arguments, a JSON array.")] = "[]",
    kwargs: Annotated[
        str, typer.Option("--kwargs", help="Keyword arguments, a JSON object.")
    ] = "{}",
    delay: Annotated[float | None, typer.Option(min=0.0, help="Seconds before it runs.")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first.")] = None,
) -> None:
    """Send a message to ACTOR and print its id."""
    with reporting_errors():
        call = _Call(
            actor,
            tuple(_decode(args, list[Any], "--args", "a JSON array")),
            _decode(kwargs, dict[str, Any], "--kwargs", "a JSON object"),
            delay,
            priority,
        )
        message_id = run_async(_send, load_broker(app), app, call)
    typer.echo(message_id)


def _decode(text: str, tp: Any, option: str, expected: str) -> Any:
    try:
        return msgspec.json.decode(text, type=tp)
    except msgspec.DecodeError as exc:
        raise CliError(f"{option} must be {expected}: {exc}") from None


async def _send(broker: Broker, spec: str, call: _Call) -> str:
    actor = broker.get_actor(call.actor)
    if actor is None:
        known = ", ".join(sorted(broker.actors)) or "none"
        raise CliError(f"{spec!r} has no actor named {call.actor!r} (declared: {known})")
    async with connected(broker, spec):
        message = await actor.send_with_options(
            args=call.args, kwargs=call.kwargs, delay=call.delay, priority=call.priority
        )
    return message.id
