"""``taskflow workers``: a table of the broker's live workers."""

from __future__ import annotations

import datetime as dt

import typer

from taskflow._inspection import WorkerInfo
from taskflow.broker import Broker
from taskflow.cli.loading import load_broker
from taskflow.cli.queues import format_rows
from taskflow.cli.runtime import AppSpec, connected, reporting_errors, run_async

COLUMNS = (
    "id",
    "host",
    "pid",
    "queues",
    "concurrency",
    "heartbeat_age",
    "in_progress",
    "processed",
)


def workers(app: AppSpec) -> None:
    """Print every live worker: id, host, pid, queues, heartbeat age, in progress, processed."""
    with reporting_errors():
        found = run_async(_collect, load_broker(app), app)
    if not found:
        typer.echo("no live workers", err=True)
        return
    now = dt.datetime.now(dt.UTC)
    typer.echo(format_rows(COLUMNS, [row(w, now) for w in found]))


def row(w: WorkerInfo, now: dt.datetime) -> tuple[str, ...]:
    """One worker's cells."""
    age = f"{(now - w.last_heartbeat).total_seconds():.1f}s"
    return (
        w.id,
        w.host,
        str(w.pid),
        ",".join(w.queues),
        str(w.concurrency),
        age,
        str(w.in_progress),
        str(w.processed),
    )


async def _collect(broker: Broker, spec: str) -> list[WorkerInfo]:
    async with connected(broker, spec):
        return await broker.workers()
