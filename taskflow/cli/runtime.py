"""What every command shares: running a coroutine, connecting, reporting errors, logging."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from taskflow._redact import redact
from taskflow.cli.aio import connected, run_async
from taskflow.cli.errors import CliError
from taskflow.cli.logs import LOG_FORMAT, configure_logging

__all__ = [
    "LOG_FORMAT",
    "AppSpec",
    "LogLevel",
    "configure_logging",
    "connected",
    "reporting_errors",
    "run_async",
]

AppSpec = Annotated[
    str,
    typer.Argument(
        metavar="MODULE:BROKER",
        help="Where the broker is, e.g. 'app.tasks:broker' (a Broker or a callable returning one).",
    ),
]
"""The ``MODULE:BROKER`` argument every command takes."""


class LogLevel(enum.StrEnum):
    """Log levels accepted by ``--log-level``."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


class LogFormat(enum.StrEnum):
    """Log formats accepted by ``--log-format``."""

    text = "text"
    json = "json"


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn a :class:`CliError` into one line on stderr and exit status 2."""
    try:
        yield
    except CliError as exc:
        typer.echo(f"Error: {redact(str(exc))}", err=True)
        raise typer.Exit(2) from None
