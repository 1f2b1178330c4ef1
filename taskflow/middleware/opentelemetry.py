"""OpenTelemetry traces across send and processing (extra ``taskflow-aio[otel]``).

A send opens a ``PRODUCER`` span ``send <actor>`` and writes the trace
context (W3C ``traceparent``/``tracestate`` with the default propagator) into
the message's ``trace_context`` option; the worker opens a ``CONSUMER`` span
``process <actor>`` whose parent is that context, so a trace crosses from
the handler that sent a message to the worker that ran it. Attributes follow
the OpenTelemetry messaging conventions (``messaging.system``,
``messaging.destination.name``, ``messaging.message.id``,
``messaging.operation.type``). An exception is recorded on the span, which
is then marked as failed.

The first attempt writes its own span context into the message (option
``trace_first``) before it runs, so a retry, which re-sends that message,
links its span to the first attempt. A redelivery after a crash, which
carries the message as first sent, links to the span of the send.

Only the OpenTelemetry API is used: the application chooses the SDK,
exporters and propagators. No other library is patched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

try:
    from opentelemetry import context, propagate, trace
    from opentelemetry.context import Context as Context_
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - depends on the installation
    raise ImportError(
        "taskflow's OpenTelemetry middleware needs opentelemetry-api: "
        "pip install 'taskflow-aio[otel]'"
    ) from None

from taskflow.middleware.base import CallNext, Context, Middleware

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext, Tracer, TracerProvider

    from taskflow.broker import Broker
    from taskflow.message import Message

#: Option carrying the sender's trace context (a dict of propagation headers).
TRACE_CONTEXT = "trace_context"
#: Option carrying the first attempt's span context (a W3C ``traceparent``).
TRACE_FIRST = "trace_first"

_W3C = TraceContextTextMapPropagator()


def _attributes(message: Message[Any], operation: str) -> dict[str, Any]:
    # The conventions' required and recommended attributes only: the SDK
    # checks every attribute of every span, a cost paid per message.
    attributes: dict[str, Any] = {
        "messaging.system": "taskflow",
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": message.queue,
        "messaging.message.id": message.id,
    }
    if message.retries:
        attributes["taskflow.retries"] = message.retries
    return attributes


def _first_attempt(traceparent: str) -> SpanContext | None:
    span_context = trace.get_current_span(_W3C.extract({"traceparent": traceparent}))
    found = span_context.get_span_context()
    return found if found.is_valid else None


class OpenTelemetry(Middleware):
    """Trace sends and processing with OpenTelemetry spans.

    Put it first, in producers and workers alike:
    ``RedisBroker(url, middleware=[OpenTelemetry(), *default_middleware()])``.

    Args:
        tracer_provider: Where spans go (default: the global tracer provider,
            looked up when a span starts, so it may be set later).
    """

    def __init__(self, *, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer: Tracer = trace.get_tracer(
            "taskflow", schema_url=None, tracer_provider=tracer_provider
        )

    async def before_enqueue(self, broker: Broker, message: Message[Any]) -> Message[Any]:
        """Open the ``PRODUCER`` span and carry its context in the message."""
        with self._tracer.start_as_current_span(
            f"send {message.actor}",
            kind=SpanKind.PRODUCER,
            attributes=_attributes(message, "send"),
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
        if not carrier:  # no SDK configured: nothing to carry
            return message
        options = {**message.options, TRACE_CONTEXT: carrier}
        return msgspec.structs.replace(message, options=options)

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Run the rest of the stack inside the ``CONSUMER`` span."""
        message = ctx.message
        carrier = message.options.get(TRACE_CONTEXT)
        parent = propagate.extract(carrier) if isinstance(carrier, dict) else None
        attributes = _attributes(message, "process")
        if ctx.delivery.redelivered:
            attributes["messaging.message.delivery_count"] = ctx.delivery.delivery_count
        span = self._tracer.start_span(
            f"process {message.actor}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=self._links(ctx, parent),
            attributes=attributes,
        )
        # attach/detach by hand rather than start_as_current_span: two
        # context managers less per message, on the hot path.
        current = trace.set_span_in_context(span, parent)
        token = context.attach(current)
        try:
            if TRACE_FIRST not in message.options and span.is_recording():
                self._remember_first_attempt(ctx, current)
            return await call_next(ctx)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            context.detach(token)
            span.end()

    def _links(self, ctx: Context, parent: Any) -> list[Link]:
        first = ctx.message.options.get(TRACE_FIRST)
        if isinstance(first, str):
            span_context = _first_attempt(first)
            return [] if span_context is None else [Link(span_context)]
        if ctx.delivery.redelivered and parent is not None:
            sent = trace.get_current_span(parent).get_span_context()
            return [Link(sent)] if sent.is_valid else []
        return []

    def _remember_first_attempt(self, ctx: Context, current: Context_) -> None:
        """Write this attempt's span context into the message a retry would re-send.

        The options dict of the delivered message is its own (decoded for
        this delivery) and a retry re-encodes it, so adding the key is enough;
        replacing the message would cost a copy per message.
        """
        carrier: dict[str, str] = {}
        _W3C.inject(carrier, context=current)
        traceparent = carrier.get("traceparent")
        if traceparent is not None:
            ctx.message.options[TRACE_FIRST] = traceparent
