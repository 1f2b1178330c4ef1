"""``--watch``: restart the workers when Python files change (needs watchfiles)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import anyio

from taskflow.cli.errors import CliError

logger = logging.getLogger("taskflow.cli.reload")


def require_watchfiles() -> None:
    """Check that ``watchfiles`` can be imported.

    Raises:
        CliError: It is not installed.
    """
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise CliError("--watch needs watchfiles: pip install 'taskflow-aio[watch]'") from None


async def watch_python_files(
    path: Path, on_change: Callable[[list[str]], None], stop: anyio.Event
) -> None:
    """Call ``on_change`` with the changed paths whenever ``.py`` files under ``path`` change.

    Returns soon after ``stop`` is set.
    """
    from watchfiles import PythonFilter, awatch

    # watchfiles logs every batch of changes at info level; on_change says it once.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    logger.info("watching %s for changes to .py files", path)
    async for changes in awatch(path, watch_filter=PythonFilter(), stop_event=stop):
        on_change(sorted({changed for _, changed in changes}))
