"""Running a command's coroutine and connecting its broker, without typer.

Used by the commands and by the worker child processes, which do not need
typer in memory.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

import anyio

from taskflow.cli.errors import CliError
from taskflow.errors import BrokerError, TaskflowError

if TYPE_CHECKING:
    from taskflow.broker import Broker

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

logger = logging.getLogger("taskflow.cli")


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
