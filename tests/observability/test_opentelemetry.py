"""taskflow.middleware.OpenTelemetry: spans with the SDK's in-memory exporter, one process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from taskflow import Retry, Worker, current_message
from taskflow.brokers.memory import MemoryBroker
from taskflow.middleware import OpenTelemetry, default_middleware
from taskflow.middleware.opentelemetry import TRACE_CONTEXT

pytestmark = pytest.mark.anyio


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def traced(provider: TracerProvider) -> MemoryBroker:
    return MemoryBroker(middleware=[OpenTelemetry(tracer_provider=provider), *default_middleware()])


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return sorted(
        (s for s in exporter.get_finished_spans() if s.name == name),
        key=lambda s: s.start_time or 0,
    )


async def test_send_and_process_spans_form_one_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    broker = traced(provider)

    carried: list[dict[str, str]] = []

    @broker.actor(queue="mail")
    async def notify(to: str) -> None:
        message = current_message()
        assert message is not None
        carried.append(message.options[TRACE_CONTEXT])

    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("POST /signup") as request:
        message = await notify.send("ada")
    async with Worker(broker, ["mail"]):
        await broker.join("mail", timeout=10)

    [send] = spans(exporter, "send notify")
    [process] = spans(exporter, "process notify")
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == request.get_span_context().trace_id
    for span, operation in ((send, "send"), (process, "process")):
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == "taskflow"
        assert span.attributes["messaging.destination.name"] == "mail"
        assert span.attributes["messaging.message.id"] == message.id
        assert span.attributes["messaging.operation.type"] == operation
    assert process.status.status_code is not StatusCode.ERROR
    # W3C trace context, in the message as it travelled
    [headers] = carried
    trace_id = f"{send.context.trace_id:032x}"
    version, carried_trace, carried_span, flags = headers["traceparent"].split("-")
    assert (version, carried_trace, carried_span) == (
        "00",
        trace_id,
        f"{send.context.span_id:016x}",
    )
    assert int(flags, 16) & 1  # sampled


async def test_retries_link_to_the_first_attempt_and_record_the_exception(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    broker = traced(provider)

    @broker.actor(max_retries=3)
    async def flaky() -> None:
        message = current_message()
        assert message is not None
        if message.retries < 2:
            raise Retry(delay=0)

    @broker.actor(max_retries=0)
    async def broken() -> None:
        raise ValueError("broken on purpose")

    await flaky.send()
    await broken.send()
    async with Worker(broker):
        await broker.join("default", timeout=10)

    first, second, third = spans(exporter, "process flaky")
    [send] = spans(exporter, "send flaky")
    for retry in (second, third):
        assert [link.context.span_id for link in retry.links] == [first.context.span_id]
        assert retry.parent is not None and retry.parent.span_id == send.context.span_id
    assert not first.links
    assert {s.context.trace_id for s in (first, second, third)} == {send.context.trace_id}

    [failed] = spans(exporter, "process broken")
    assert failed.status.status_code is StatusCode.ERROR
    [event] = [e for e in failed.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "broken on purpose"


async def test_a_redelivery_links_to_the_send(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    broker = traced(provider)

    @broker.actor
    async def once() -> None:
        pass

    await once.send()
    deliveries = broker.consume("default")
    delivery = await anext(deliveries)
    await delivery.requeue()  # as a crashed worker's message comes back
    await deliveries.aclose()
    async with Worker(broker):
        await broker.join("default", timeout=10)

    [send] = spans(exporter, "send once")
    [process] = spans(exporter, "process once")
    assert (
        process.attributes is not None
        and process.attributes["messaging.message.delivery_count"] == 2
    )
    assert [link.context.span_id for link in process.links] == [send.context.span_id]


async def test_without_an_sdk_messages_carry_nothing() -> None:
    broker = MemoryBroker(middleware=[OpenTelemetry(), *default_middleware()])

    @broker.actor
    async def plain() -> None:
        pass

    seen: list[dict[str, object]] = []

    @broker.actor
    async def look() -> None:
        message = current_message()
        assert message is not None
        seen.append(message.options)

    await look.send()  # the global provider is the API's no-op one
    async with Worker(broker):
        await broker.join("default", timeout=10)
    assert seen == [{}]
