"""What every command shares: running a coroutine, connecting, reporting errors, logging."""

from __future__ import annotations

import enum
import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Annotated, TypeVar, TypeVarTuple

import anyio
import typer

from taskflow.cli.loading import CliError
from taskflow.errors import BrokerError, TaskflowError

if TYPE_CHECKING:
    from taskflow.broker import Broker

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

AppSpec = Annotated[
    str,
    typer.Argument(
        metavar="MODULE:BROKER",
        help="Where the broker is, e.g. 'app.tasks:broker' (a Broker or a callable returning one).",
    ),
]
"""The ``MODULE:BROKER`` argument every command takes."""

logger = logging.getLogger("taskflow.cli")


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


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send log records to stderr: text lines with the pid, level and logger, or JSON objects."""
    from taskflow.logs import configure

    configure(level, log_format)


def run_async(fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """Run ``fn(*args)`` in a new event loop, on uvloop when it is installed."""
    use_uvloop = importlib.util.find_spec("uvloop") is not None
    return anyio.run(fn, *args, backend_options={"use_uvloop": use_uvloop})


@asynccontextmanager
async def connected(broker: Broker, spec: str) -> AsyncIterator[Broker]:
    """Connect ``broker`` for the duration of the block.

    Raises:
        CliError: The broker's server could not be reached, or failed in the block.
    """
    try:
        await broker.connect()
    except (TaskflowError, OSError) as exc:
        raise CliError(f"cannot connect to the broker {spec!r}: {exc}") from None
    try:
        yield broker
    except (BrokerError, OSError) as exc:
        raise CliError(f"the broker {spec!r} failed: {exc}") from None
    finally:
        await _close_quietly(broker)


async def _close_quietly(broker: Broker) -> None:
    try:
        await broker.close()
    except (TaskflowError, OSError) as exc:
        logger.debug("closing the broker failed: %s", exc)


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn a :class:`CliError` into one line on stderr and exit status 2."""
    try:
        yield
    except CliError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
