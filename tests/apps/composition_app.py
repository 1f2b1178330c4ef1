"""Worker app for the composition fault tests: groups on a durable broker, with a ledger.

Worker processes (``python -m taskflow worker tests.apps.composition_app:broker``)
build the broker from the environment:

* ``TASKFLOW_COMPOSITION_URL``: ``sqlite:///<path>`` or ``redis://...``;
* ``TASKFLOW_COMPOSITION_NAMESPACE``: the Redis broker's namespace;
* ``TASKFLOW_LEDGER``: a file; every actor run appends lines
  ``<pid> <event> <message id> <delivery count> <argument>`` with O_APPEND, so
  the lines of all processes keep the order they happened in.

Brokers use results, a 2 s visibility timeout and a 0.5 s reaper, and an
outermost :class:`CrashAfterSuccess` middleware: a message sent with
``crash_after_success=True`` kills its worker process right after it
succeeded (result stored, group member counted) but before it is acked, on
its first delivery only.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import anyio

from taskflow import Broker, Delivery, broker_from_url
from taskflow.middleware import CallNext, Context, Middleware, current_delivery, default_middleware

URL_ENV = "TASKFLOW_COMPOSITION_URL"
NAMESPACE_ENV = "TASKFLOW_COMPOSITION_NAMESPACE"
LEDGER_ENV = "TASKFLOW_LEDGER"
QUEUE = "composition"


def ledger(event: str, argument: Any, delivery: Delivery | None = None) -> None:
    """Append one line about ``delivery`` (default: the current one) to the ledger file."""
    path = os.environ.get(LEDGER_ENV)
    delivery = delivery or current_delivery()
    if not path or delivery is None:
        return
    line = f"{os.getpid()} {event} {delivery.message.id} {delivery.delivery_count} {argument}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_ledger(path: str | os.PathLike[str]) -> list[tuple[int, str, str, int, str]]:
    """The ledger's lines in order: (pid, event, message id, delivery count, argument)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        pid, event, mid, count, argument = line.split(" ", 4)
        rows.append((int(pid), event, mid, int(count), argument))
    return rows


class CrashAfterSuccess(Middleware):
    """Kill the process after a ``crash_after_success`` message succeeded, before its ack."""

    actor_options = frozenset({"crash_after_success"})

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Run the stack; then, on a first delivery that asked for it, die."""
        value = await call_next(ctx)
        if ctx.option("crash_after_success") and ctx.delivery.delivery_count == 1:
            ledger("crash", "", ctx.delivery)
            os._exit(137)
        return value


def build(url: str, namespace: str = "taskflow-composition") -> Broker:
    """The broker, with the app's actors declared on it."""
    options: dict[str, Any] = {
        "results": True,
        "visibility_timeout": 2.0,
        "reaper_interval": 0.5,
        "middleware": [CrashAfterSuccess(), *default_middleware()],
    }
    if url.startswith("redis"):
        options["namespace"] = namespace
    b = broker_from_url(url, **options)

    @b.actor(queue=QUEUE, max_retries=0, time_limit=None)
    async def member(i: int, ms: int) -> int:
        """Sleep ``ms`` milliseconds and return ``i``, with ledger lines."""
        ledger("start", i)
        await anyio.sleep(ms / 1000)
        ledger("done", i)
        return i

    @b.actor(queue=QUEUE, max_retries=0)
    async def completed(tag: str) -> None:
        """The group's completion callback."""
        ledger("callback", tag)

    return b


@cache
def _from_env() -> Broker:
    return build(os.environ[URL_ENV], os.environ.get(NAMESPACE_ENV, "taskflow-composition"))


def __getattr__(name: str) -> Any:
    # Built on first use, so that importing this module needs no environment.
    if name == "broker":
        return _from_env()
    raise AttributeError(name)
