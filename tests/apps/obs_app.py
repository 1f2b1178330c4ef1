"""Worker app for the observability tests: metrics, traces and JSON logs.

Worker processes (``python -m taskflow worker tests.apps.obs_app:broker``)
build a RedisBroker from the environment:

* ``TASKFLOW_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``),
* ``TASKFLOW_REDIS_NAMESPACE`` (default ``taskflow-obs``),
* ``TASKFLOW_SPANS_FILE``: when set, the stack starts with
  :class:`taskflow.middleware.OpenTelemetry` and the OpenTelemetry SDK writes
  every finished span to that file, one JSON object per line.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import anyio

from taskflow import Middleware, Reject, Retry
from taskflow.brokers.redis import RedisBroker
from taskflow.middleware import default_middleware
from tests.apps.cli_app import mark
from tests.apps.redis_app import Markers

URL_ENV = "TASKFLOW_REDIS_URL"
NAMESPACE_ENV = "TASKFLOW_REDIS_NAMESPACE"
SPANS_ENV = "TASKFLOW_SPANS_FILE"
QUEUE = "obs"


def span_file_exporter(path: str) -> Any:
    """An SDK span processor writing each ended span to ``path`` as one JSON line."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    out = open(path, "a", buffering=1)  # lives as long as the process
    exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    return SimpleSpanProcessor(exporter)


def _tracing() -> list[Middleware]:
    path = os.environ.get(SPANS_ENV)
    if not path:
        return []
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from taskflow.middleware import OpenTelemetry

    provider = TracerProvider()
    provider.add_span_processor(span_file_exporter(path))
    trace.set_tracer_provider(provider)
    return [OpenTelemetry()]


def build(
    url: str | None = None, namespace: str | None = None, first: list[Middleware] | None = None
) -> RedisBroker:
    """A RedisBroker with the observability tests' actors.

    ``first`` goes before the default stack (default: tracing when the
    environment asks for it).
    """
    b = RedisBroker(
        url or os.environ.get(URL_ENV, "redis://127.0.0.1:6379/15"),
        namespace=namespace or os.environ.get(NAMESPACE_ENV, "taskflow-obs"),
        middleware=[*(_tracing() if first is None else first), *default_middleware(), Markers()],
    )

    @b.actor(queue=QUEUE)
    async def ok() -> None:
        """Succeed after 5 ms, leaving a ``ran-<pid>`` marker."""
        mark("ran")
        await anyio.sleep(0.005)

    @b.actor(queue=QUEUE, max_retries=2, min_backoff=0.01, max_backoff=0.02)
    async def flaky() -> None:
        """Fail twice (retried), then succeed."""
        from taskflow import current_message

        message = current_message()
        assert message is not None
        if message.retries < 2:
            raise Retry(delay=0.01)

    @b.actor(queue=QUEUE, max_retries=1, min_backoff=0.01, max_backoff=0.02)
    async def broken() -> None:
        """Always fail: one retry, then the dead letters."""
        raise ValueError("broken on purpose")

    @b.actor(queue=QUEUE)
    async def refuse() -> None:
        """Straight to the dead letters."""
        raise Reject("not today")

    return b


@cache
def _from_env() -> RedisBroker:
    return build()


def __getattr__(name: str) -> Any:
    # Built on first use, so that importing this module needs no environment.
    if name == "broker":
        return _from_env()
    raise AttributeError(name)
