"""The headers taskflow writes on RabbitMQ messages, and what it reads back from them.

* ``x-tf-deliveries``: deliveries counted before this copy was published
  (a requeue, a classic-queue redelivery or a hand-back republishes the
  message and carries its count along).
* ``x-tf-delay-left``: milliseconds still to wait after one pass through
  the delay ladder.
* ``x-tf-reason``, ``x-tf-dead-at``: why and when (unix time in integer
  milliseconds) a message was dead-lettered by taskflow. Not a float: pamqp
  writes a Python float as an AMQP 32-bit float, which holds today's unix
  time only to 128 s. Letters written in seconds earlier are still read.

RabbitMQ adds its own: ``x-delivery-count`` (quorum queues) and ``x-death``
(when the server dead-letters a message itself).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import TYPE_CHECKING, Any

from taskflow._transport import DeadRecord

if TYPE_CHECKING:
    from aiormq.abc import DeliveredMessage

    from taskflow.brokers.rabbitmq._topology import QueueType

H_DELIVERIES = "x-tf-deliveries"
H_REASON = "x-tf-reason"
H_DEAD_AT = "x-tf-dead-at"
H_DELAY_LEFT = "x-tf-delay-left"


def header_int(value: Any) -> int:
    """A non-negative integer header, 0 when missing or malformed."""
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def prior_deliveries(message: DeliveredMessage, queue_type: QueueType) -> int:
    """How many times ``message`` was delivered before this delivery.

    The ``x-tf-deliveries`` header carries the count across republishing;
    on top of it a quorum queue reports its own redeliveries in
    ``x-delivery-count``, and a classic queue only flags one.
    """
    headers = message.header.properties.headers or {}
    prior = header_int(headers.get(H_DELIVERIES))
    if queue_type == "quorum":
        return prior + header_int(headers.get("x-delivery-count"))
    return prior + (1 if message.redelivered else 0)


def delay_left(message: DeliveredMessage) -> int:
    """Milliseconds ``message`` must still wait after its pass through the ladder."""
    return header_int((message.header.properties.headers or {}).get(H_DELAY_LEFT))


#: Below this a stored time is in seconds (written by older versions), above in milliseconds.
_MS_FROM = 100_000_000_000


def dead_headers(reason: str) -> dict[str, Any]:
    """Headers of a message taskflow dead-letters now for ``reason``."""
    return {H_REASON: reason[:1000], H_DEAD_AT: time.time_ns() // 1_000_000}


def _unix_time(value: Any) -> float | None:
    """Seconds from a stored time: milliseconds, seconds, or an AMQP timestamp."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value / 1000 if value >= _MS_FROM else float(value)


def dead_record(got: DeliveredMessage) -> DeadRecord:
    """A dead letter read with ``basic.get`` as a :class:`DeadRecord`."""
    properties = got.header.properties
    headers: dict[str, Any] = dict(properties.headers or {})
    reason = headers.get(H_REASON)
    dead_at: Any = headers.get(H_DEAD_AT)
    if reason is None:
        # Dead-lettered by RabbitMQ itself (a quorum delivery limit, a reject).
        deaths = headers.get("x-death")
        death: dict[str, Any] = (
            deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
        )
        cause = str(death.get("reason", "unknown"))
        reason = (
            "delivery_limit_exceeded: RabbitMQ's delivery limit"
            if cause == "delivery_limit"
            else f"rabbitmq_{cause}: dead-lettered by RabbitMQ"
        )
        dead_at = death.get("time")
    if isinstance(reason, bytes):
        reason = reason.decode(errors="replace")
    when = _unix_time(dead_at)
    return DeadRecord(
        properties.message_id or "", got.body, str(reason), time.time() if when is None else when
    )


def new_message_id() -> str:
    """An id for a message published without one (raw injections)."""
    return f"amqp-{uuid.uuid4().hex}"
