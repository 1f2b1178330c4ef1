"""The actors of the aiohttp example: ``taskflow worker examples.aiohttp_app.tasks:broker``.

The web app imports this module to send messages; the worker imports it to
run them. Neither needs the other's framework.

Settings come from the environment, read by both processes:

* ``TASKFLOW_BROKER_URL``: the broker (default ``sqlite:///taskflow.sqlite3``
  in the working directory, so nothing needs to be installed);
* ``TASKFLOW_NAMESPACE``: for Redis, a key prefix of this app's own, so
  several apps can share one server.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from typing import Any

import msgspec

import taskflow

QUEUE = "reports"


def build_broker() -> taskflow.Broker:
    """The broker named by the environment, keeping results on the same server."""
    options: dict[str, Any] = {"results": True}
    if namespace := os.environ.get("TASKFLOW_NAMESPACE"):
        options["namespace"] = namespace
    return taskflow.broker_from_env(**options)


broker = build_broker()


class Report(msgspec.Struct, frozen=True):
    """Summary statistics of a series of measurements."""

    count: int
    mean: float
    median: float
    stdev: float
    low: float
    high: float


@broker.actor(
    queue=QUEUE,
    store_results=True,
    throws=(statistics.StatisticsError,),
    max_retries=3,
    time_limit=60,
)
async def build_report(series: str, values: list[float]) -> Report:
    """Compute the statistics of ``values``, named ``series``.

    An async actor: the worker runs hundreds of them at once on its event
    loop while each waits on I/O (here, a pretend fetch of the series'
    metadata). An empty series fails for good: retrying cannot help.
    """
    await asyncio.sleep(0.01)
    if not values:
        raise statistics.StatisticsError(f"series {series!r} has no values")
    return Report(
        count=len(values),
        mean=statistics.fmean(values),
        median=statistics.median(values),
        stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
        low=min(values),
        high=max(values),
    )
