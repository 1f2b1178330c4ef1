"""A trace from a producer process into a ``taskflow worker`` process (spans exported to a file)."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskflow import Middleware
from taskflow.middleware import OpenTelemetry
from tests.apps import obs_app
from tests.apps.redis_app import delete_namespace
from tests.cli.procs import WorkerCli, wait_until

pytestmark = pytest.mark.slow

StartWorker = Callable[..., WorkerCli]


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    name = f"tf-obs-{uuid.uuid4().hex[:12]}"
    yield name
    delete_namespace(redis_url, name)


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def traced_worker(
    worker_cli: StartWorker, redis_url: str, namespace: str, spans_file: Path
) -> WorkerCli:
    """A ``taskflow worker`` whose OpenTelemetry SDK writes its spans to ``spans_file``."""
    cli = worker_cli(
        "tests.apps.obs_app:broker",
        env={
            obs_app.URL_ENV: redis_url,
            obs_app.NAMESPACE_ENV: namespace,
            obs_app.SPANS_ENV: str(spans_file),
        },
    )
    cli.wait_for_pids(1)
    return cli


def in_memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_a_trace_crosses_from_the_producer_into_the_worker(
    worker_cli: StartWorker, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    spans_file = tmp_path / "worker-spans.jsonl"
    cli = traced_worker(worker_cli, redis_url, namespace, spans_file)
    provider, exporter = in_memory()

    async def produce() -> None:
        tracing: list[Middleware] = [OpenTelemetry(tracer_provider=provider)]
        async with obs_app.build(redis_url, namespace, first=tracing) as broker:
            with provider.get_tracer("test").start_as_current_span("GET /order"):
                await broker.actors["ok"].send()
                await broker.actors["flaky"].send()
            await broker.join(obs_app.QUEUE, timeout=20)

    anyio.run(produce)
    wait_until(lambda: len(read_spans(spans_file)) >= 4, 10, "the worker's spans")
    cli.signal(signal.SIGTERM)
    assert cli.wait(timeout=20) == 0

    produced = {s.name: s for s in exporter.get_finished_spans()}
    request, send_ok, send_flaky = (
        produced["GET /order"],
        produced["send ok"],
        produced["send flaky"],
    )
    consumed = read_spans(spans_file)
    trace_id = f"0x{request.context.trace_id:032x}"
    [ok] = [s for s in consumed if s["name"] == "process ok"]
    assert ok["kind"] == "SpanKind.CONSUMER"
    assert ok["context"]["trace_id"] == trace_id
    assert ok["parent_id"] == f"0x{send_ok.context.span_id:016x}"
    assert ok["attributes"]["messaging.destination.name"] == obs_app.QUEUE
    attempts = sorted(
        (s for s in consumed if s["name"] == "process flaky"), key=lambda s: s["start_time"]
    )
    assert len(attempts) == 3
    assert {s["parent_id"] for s in attempts} == {f"0x{send_flaky.context.span_id:016x}"}
    first_span_id = attempts[0]["context"]["span_id"]
    for retry in attempts[1:]:
        assert [link["context"]["span_id"] for link in retry["links"]] == [first_span_id]
    assert [e["name"] for e in attempts[0]["events"]] == ["exception"]


def test_a_trace_crosses_from_a_fastapi_handler_into_the_worker(
    worker_cli: StartWorker, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    import httpx
    from fastapi import FastAPI
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    spans_file = tmp_path / "worker-spans.jsonl"
    cli = traced_worker(worker_cli, redis_url, namespace, spans_file)
    provider, exporter = in_memory()
    tracing: list[Middleware] = [OpenTelemetry(tracer_provider=provider)]
    broker = obs_app.build(redis_url, namespace, first=tracing)
    app = FastAPI()

    @app.post("/orders")
    async def order() -> dict[str, str]:
        message = await broker.actors["ok"].send()
        return {"id": message.id}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)

    async def call() -> str:
        async with broker:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                reply = await client.post("/orders")
            await broker.join(obs_app.QUEUE, timeout=20)
        message_id: str = reply.json()["id"]
        return message_id

    message_id = anyio.run(call)
    wait_until(lambda: bool(read_spans(spans_file)), 10, "the worker's span")
    cli.signal(signal.SIGTERM)
    assert cli.wait(timeout=20) == 0

    [server] = [s for s in exporter.get_finished_spans() if s.name == "POST /orders"]
    [send] = [s for s in exporter.get_finished_spans() if s.name == "send ok"]
    [process] = read_spans(spans_file)
    assert send.parent is not None and send.parent.span_id == server.context.span_id
    assert process["name"] == "process ok"
    assert process["attributes"]["messaging.message.id"] == message_id
    assert process["context"]["trace_id"] == f"0x{server.context.trace_id:032x}"
    assert process["parent_id"] == f"0x{send.context.span_id:016x}"
