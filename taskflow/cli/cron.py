"""``taskflow cron list``: each schedule with its last and next fire time."""

from __future__ import annotations

import typer

from taskflow.broker import Broker
from taskflow.cli.loading import load_broker
from taskflow.cli.runtime import AppSpec, connected, reporting_errors, run_async
from taskflow.scheduling import Schedule

cron = typer.Typer(name="cron", help="Inspect periodic tasks.", no_args_is_help=True)

COLUMNS = ("name", "actor", "cron", "tz", "last", "next")


@cron.command("list")
def list_schedules(app: AppSpec) -> None:
    """Print each schedule: name, actor, expression, zone, last and next fire (ISO 8601)."""
    with reporting_errors():
        rows = run_async(_collect, load_broker(app), app)
    if not rows:
        typer.echo("no schedules declared", err=True)
        return
    typer.echo(format_table(rows))


async def _row(schedule: Schedule) -> tuple[str, ...]:
    last = await schedule.last_fire()
    return (
        schedule.name,
        schedule.actor.name,
        schedule.cron.expr,
        str(schedule.cron.tz),
        "-" if last is None else last.isoformat(),
        schedule.next_fire().isoformat(),
    )


async def _collect(broker: Broker, spec: str) -> list[tuple[str, ...]]:
    async with connected(broker, spec):
        return [await _row(s) for s in broker.schedules.values()]


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Lay out schedule rows under a header, columns left-aligned."""
    cells = [COLUMNS, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
