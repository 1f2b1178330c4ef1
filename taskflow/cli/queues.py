"""``taskflow queues``: a table of every known queue's message counts."""

from __future__ import annotations

import typer

from taskflow._transport import QueueStats
from taskflow.broker import Broker
from taskflow.cli.loading import load_broker
from taskflow.cli.runtime import AppSpec, connected, reporting_errors, run_async

COLUMNS = ("queue", *QueueStats._fields)


def queues(app: AppSpec) -> None:
    """Print ready, delayed, in-flight and dead counts of every known queue."""
    with reporting_errors():
        rows = run_async(_collect, load_broker(app), app)
    typer.echo(format_table(rows))


async def _collect(broker: Broker, spec: str) -> list[tuple[str, QueueStats]]:
    async with connected(broker, spec):
        return [(name, await broker.stats(name)) for name in await broker.known_queues()]


def format_table(rows: list[tuple[str, QueueStats]]) -> str:
    """Lay out queue stats as a text table: names left-aligned, counts right-aligned."""
    return format_rows(COLUMNS, [(name, *map(str, stats)) for name, stats in rows])


def format_rows(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Lay out a text table: the first column left-aligned, the others right-aligned."""
    cells = [columns, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in cells
    )
