"""``taskflow dlq list|requeue|purge``: inspect and act on a queue's dead letters."""

from __future__ import annotations

from typing import Annotated

import typer

from taskflow.broker import Broker, DeadLetter
from taskflow.cli.loading import load_broker
from taskflow.cli.runtime import AppSpec, connected, reporting_errors, run_async

dlq = typer.Typer(name="dlq", help="List, requeue and purge dead letters.", no_args_is_help=True)

QueueOption = Annotated[str, typer.Option("--queue", "-q", help="The queue.")]


@dlq.command("list")
def list_letters(
    app: AppSpec,
    queue: QueueOption,
    limit: Annotated[int, typer.Option(min=1, help="Most dead letters shown.")] = 100,
) -> None:
    """Print a queue's dead letters, one per line: id, dead_at, actor, reason."""
    with reporting_errors():
        letters = run_async(_list, load_broker(app), app, queue, limit)
    for letter in letters:
        typer.echo(format_letter(letter))
    if not letters:
        typer.echo(f"no dead letters in {queue!r}", err=True)


@dlq.command()
def requeue(
    app: AppSpec,
    queue: QueueOption,
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="A dead letter to requeue; repeat for more (default: all)."),
    ] = None,
) -> None:
    """Move dead letters back to their queue."""
    with reporting_errors():
        count = run_async(_requeue, load_broker(app), app, queue, ids or None)
    typer.echo(f"requeued {count} dead letter(s) to {queue!r}")


@dlq.command()
def purge(app: AppSpec, queue: QueueOption) -> None:
    """Delete every dead letter of a queue."""
    with reporting_errors():
        count = run_async(_purge, load_broker(app), app, queue)
    typer.echo(f"purged {count} dead letter(s) from {queue!r}")


def format_letter(letter: DeadLetter) -> str:
    """One line for a dead letter; ``?`` stands for the actor of a body that did not decode."""
    actor = letter.message.actor if letter.message is not None else "?"
    when = letter.dead_at.isoformat(timespec="seconds")
    return f"{letter.id}  {when}  {actor}  {letter.reason}"


async def _list(broker: Broker, spec: str, queue: str, limit: int) -> list[DeadLetter]:
    async with connected(broker, spec):
        return await broker.dead_letters(queue, limit=limit)


async def _requeue(broker: Broker, spec: str, queue: str, ids: list[str] | None) -> int:
    async with connected(broker, spec):
        return await broker.requeue_dead(queue, ids)


async def _purge(broker: Broker, spec: str, queue: str) -> int:
    async with connected(broker, spec):
        return await broker.purge_dead(queue)
