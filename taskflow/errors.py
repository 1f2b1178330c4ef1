"""The exception tree of taskflow.

::

    TaskflowError
    ├── BrokerError
    │   ├── BrokerUnavailable      the server could not be reached after bounded retries
    │   ├── JoinTimeout            Broker.join gave up before the queue drained (a TimeoutError)
    │   ├── LeaseLost              a late ack or retry from a worker whose lease expired
    │   ├── MessageTooLarge        an encoded message over the broker's size limit
    │   ├── PublishRejected        RabbitMQ refused a publish (a negative confirm)
    │   └── Unroutable             RabbitMQ returned a mandatory publish: no queue bound
    ├── DecodeError                bytes that are not a valid message (keeps the raw bytes)
    ├── ActorNotFound              a message for an actor this broker does not know
    ├── InvalidArguments           arguments that do not fit the actor's signature
    ├── MiddlewareError            a middleware stack that cannot work (not Middleware objects)
    ├── ResultFailed               the actor failed; carries the remote type, message, traceback
    ├── ResultTimeout              no result within the timeout (also a TimeoutError)
    ├── ResultsNotConfigured       result() on a broker without a result backend
    ├── TimeLimitExceeded          an actor ran past its time limit
    ├── RateLimitExceeded          a rate limiter is full (the message is deferred, not failed)
    ├── WorkerShutdown             raised in a sync actor's thread when shutdown stops waiting
    ├── Cancelled                  the message was cancelled (broker.cancel); never retried
    └── signals raised by actors to steer their message:
        ├── Retry                  retry later (optionally after ``delay`` seconds)
        └── Reject                 send the message straight to dead letters
"""

from __future__ import annotations

from typing import Any


class TaskflowError(Exception):
    """Base class of every error taskflow raises."""


class BrokerError(TaskflowError):
    """A broker operation failed."""


class JoinTimeout(BrokerError, TimeoutError):
    """``Broker.join`` gave up before the queue drained."""


class BrokerUnavailable(BrokerError):
    """The broker's server could not be reached after a bounded number of attempts."""


class LeaseLost(BrokerError):
    """An ack or retry was refused because this worker no longer holds the message's lease."""


class MessageTooLarge(BrokerError):
    """An encoded message is larger than the broker's ``max_message_size``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class PublishRejected(BrokerError):
    """RabbitMQ refused a publish with a negative confirm (``basic.nack``)."""


class Unroutable(BrokerError):
    """RabbitMQ returned a mandatory publish: no queue was bound to receive it."""


class DecodeError(TaskflowError):
    """Bytes that could not be decoded into a message; ``data`` keeps them."""

    def __init__(self, reason: str, data: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data


class ActorNotFound(TaskflowError):
    """A message names an actor that is not declared on this broker."""


class InvalidArguments(TaskflowError):
    """A message's arguments do not fit its actor's signature."""


class MiddlewareError(TaskflowError):
    """A middleware stack that cannot work: an entry that is not a ``Middleware`` object."""


class TimeLimitExceeded(TaskflowError):
    """An actor ran longer than its ``time_limit``."""


class RateLimitExceeded(TaskflowError):
    """A rate limiter had no room: it is full, or its window or bucket is used up.

    Raised by ``limiter.acquire()``. Raised inside an actor (or met by the
    actor's ``rate_limit`` / ``max_concurrency`` option), it defers the
    message: it runs again after a short delay, without using up a retry.

    Attributes:
        key: The limiter's key.
        retry_after: Seconds after which the limiter may have room, when it
            knows (window and bucket limiters); ``None`` otherwise.
        limiter: The limiter that raised it, if one did.
        ahead: Messages deferred before this one still waiting for the key,
            when the message was named as a waiter.
    """

    def __init__(self, key: str, retry_after: float | None = None) -> None:
        super().__init__(f"rate limit {key!r} exceeded")
        self.key = key
        self.retry_after = retry_after
        self.limiter: Any = None
        self.ahead = 0


class ResultsNotConfigured(TaskflowError):
    """Results were requested from a broker built without ``results=``."""


class ResultTimeout(TaskflowError, TimeoutError):
    """No result arrived within the timeout."""


class ResultFailed(TaskflowError):
    """The actor failed for good; the remote exception is described, never re-created."""

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class WorkerShutdown(TaskflowError):
    """Raised inside a sync actor's thread when the worker gives up waiting for it."""


class Cancelled(TaskflowError):
    """The message was cancelled with ``broker.cancel`` / ``message.cancel``.

    Raised in a running actor (its task cancelled, or raised inside its
    thread for a sync actor) and by a cancelled message that has not run.
    The message goes to dead letters with reason ``cancelled``, is never
    retried, and its result raises ``ResultFailed`` of type ``Cancelled``.
    """


class Retry(TaskflowError):
    """Raised by an actor to be retried, after ``delay`` seconds if given.

    A retry asked for this way is logged without a traceback and counts
    against ``max_retries`` like any other.
    """

    def __init__(self, delay: float | None = None) -> None:
        super().__init__(f"retry requested (delay={delay})")
        self.delay = delay


class Reject(TaskflowError):
    """Raised by an actor to send its message straight to dead letters."""
