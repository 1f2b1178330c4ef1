"""Prometheus metrics of the messages a process sends and processes.

Counted as Dramatiq counts: every attempt is a message processed (and an
error when it fails), every scheduled retry a retry, every message that
reaches the dead letters one dead letter (labelled with the reason's kind,
``max_retries_exceeded``, ``rejected``, ...). Every metric is labelled by
``queue`` and ``actor``. Attempts, errors and times are counted around the
rest of the stack (:meth:`Prometheus.process`); retries, dead letters and
deferrals where the worker's settler carries them out
(:meth:`Prometheus.after_settle`), so the messages it refuses before the
stack (unknown actor, invalid arguments) count too. Dead letters the broker
makes before a worker sees the message (undecodable, too large, past
``max_deliveries``) are not counted here; ``taskflow_queue_messages``
shows them in the ``dead`` state.

The labelled children of each (queue, actor) pair are looked up once and
kept, so processing a message costs a handful of increments, not a label
look-up per metric. In ``taskflow worker --metrics-port`` each worker
process writes its values to files of ``prometheus_client``'s multiprocess
mode and the supervisor serves their sum; embedded in any other process the
metrics live in ``prometheus_client``'s default registry (or the one given),
to be served however that process serves metrics.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import logging
import os
import time
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError:  # pragma: no cover - exercised by the CLI's install hint
    raise ImportError(
        "taskflow's Prometheus metrics need prometheus-client: "
        "pip install 'taskflow-aio[prometheus]'"
    ) from None

from taskflow.middleware.base import CallNext, Context, Middleware, Outcome

if TYPE_CHECKING:
    from taskflow.broker import Broker, Delivery
    from taskflow.message import Message
    from taskflow.worker import Worker

logger = logging.getLogger("taskflow.middleware.prometheus")

#: Seconds; from 1 ms no-ops to jobs of ten minutes and more.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
#: Seconds from enqueue (or eta) to start; queues may wait hours.
LATENCY_BUCKETS = (*DURATION_BUCKETS, 4 * 3600.0, 24 * 3600.0)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between updates of the in-progress gauges and the histograms.
PUBLISH_INTERVAL = 1.0
QUEUE_STATES = ("ready", "delayed", "in_flight", "dead")
LABELS = ("queue", "actor")


class Metrics:
    """The metric families of taskflow, registered once per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = LABELS) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.sent = counter("taskflow_messages_sent", "Messages handed to the broker to send.")
        self.messages = counter("taskflow_messages", "Processing attempts started.")
        self.errors = counter("taskflow_message_errors", "Processing attempts that raised.")
        self.retries = counter("taskflow_message_retries", "Retries scheduled after a failure.")
        self.dead_letters = counter(
            "taskflow_message_dead_letters",
            "Messages moved to the dead letters, by the reason's kind.",
            (*LABELS, "reason"),
        )
        self.deferrals = counter(
            "taskflow_message_deferrals", "Messages put back by a full rate limit."
        )
        self.in_progress = Gauge(
            "taskflow_messages_in_progress",
            "Messages being processed now.",
            LABELS,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.duration = Histogram(
            "taskflow_message_duration_seconds",
            "Seconds one processing attempt took.",
            LABELS,
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.latency = Histogram(
            "taskflow_message_latency_seconds",
            "Seconds from enqueue (or eta) until processing started.",
            LABELS,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.queue_messages = Gauge(
            "taskflow_queue_messages",
            "Messages in a queue by state, sampled on an interval.",
            ("queue", "state"),
            registry=registry,
            multiprocess_mode="livemostrecent",
        )


_metrics: dict[int, Metrics] = {}


def metrics_for(registry: CollectorRegistry | None = None) -> Metrics:
    """Return taskflow's metrics in ``registry`` (default: the global one), creating them once."""
    registry = REGISTRY if registry is None else registry
    found = _metrics.get(id(registry))
    if found is None:
        found = _metrics[id(registry)] = Metrics(registry)
    return found


class _Tally:
    """Observations of one histogram child, kept in plain numbers until published.

    In multiprocess mode every ``observe`` is two writes to a memory-mapped
    file under a lock; at thousands of messages per second those writes were
    most of what metrics cost. Here an observation is a bisection and two
    additions, and :meth:`publish` hands the totals to the child once per
    interval. It adds to the child's bucket and sum values directly
    (``prometheus_client`` has no public call to observe many values at once);
    those two attributes have had these names in every release since the
    multiprocess mode exists, and the tests read the result through the
    public registry.
    """

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Histogram, bounds: tuple[float, ...]) -> None:
        self.child = child
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def publish(self) -> None:
        counts, total = self.counts, self.total
        if not any(counts):
            return
        self.counts, self.total = [0] * len(counts), 0.0
        child: Any = self.child
        child._sum.inc(total)
        for bucket, count in zip(child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class _Bound:
    """The children of every metric for one (queue, actor) pair."""

    __slots__ = (
        "duration",
        "errors",
        "in_progress",
        "latency",
        "deferrals",
        "messages",
        "retries",
        "running",
    )

    def __init__(self, metrics: Metrics, queue: str, actor: str) -> None:
        self.running = 0
        self.messages = metrics.messages.labels(queue, actor)
        self.errors = metrics.errors.labels(queue, actor)
        self.retries = metrics.retries.labels(queue, actor)
        self.deferrals = metrics.deferrals.labels(queue, actor)
        self.in_progress = metrics.in_progress.labels(queue, actor)
        self.duration = _Tally(metrics.duration.labels(queue, actor), DURATION_BUCKETS)
        self.latency = _Tally(metrics.latency.labels(queue, actor), LATENCY_BUCKETS)

    def publish(self) -> None:
        self.in_progress.set(self.running)
        self.duration.publish()
        self.latency.publish()


def reason_kind(reason: str) -> str:
    """Return the kind of a dead-letter reason: the word before its colon."""
    return reason.split(":", 1)[0].strip() or "unknown"


class _SamplerLock:
    """Elects one sampler among the processes sharing a multiprocess directory.

    Each process tries an exclusive ``flock`` on one file of the directory;
    the holder samples, the others try again on their next interval. The
    kernel releases the lock of a process that dies, so another one takes
    over. Outside multiprocess mode there is no one to share with.
    """

    def __init__(self) -> None:
        directory = os.environ.get(MULTIPROC_ENV)
        self._path = os.path.join(directory, "queue-sampler.lock") if directory else None
        self._fd: int | None = None
        self._held = self._path is None

    def __enter__(self) -> _SamplerLock:
        if self._path is not None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def acquire(self) -> bool:
        """Return whether this process holds the lock, taking it when it is free."""
        if not self._held and self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self._held = True
        return self._held


class Prometheus(Middleware):
    """Count sends and processing in Prometheus metrics (extra ``taskflow-aio[prometheus]``).

    Put it first in a stack to see everything the other layers decide:
    ``RedisBroker(url, middleware=[Prometheus(), *default_middleware()])``.
    In a producer it counts ``taskflow_messages_sent_total``; in a worker it
    counts every metric of the README's list. ``taskflow worker
    --metrics-port`` adds it to the stack by itself when it is missing.

    Args:
        registry: Where the metrics live (default: ``prometheus_client``'s global registry).
        queue_stats_interval: Seconds between samples of the worker's queue
            depths (``taskflow_queue_messages``); ``None`` samples none.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        queue_stats_interval: float | None = None,
    ) -> None:
        self.metrics = metrics_for(registry)
        self.queue_stats_interval = queue_stats_interval
        self._bound: dict[tuple[str, str], _Bound] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def _for(self, queue: str, actor: str) -> _Bound:
        bound = self._bound.get((queue, actor))
        if bound is None:
            bound = self._bound[(queue, actor)] = _Bound(self.metrics, queue, actor)
        return bound

    async def before_enqueue(self, broker: Broker, message: Message[Any]) -> Message[Any]:
        """Count the message as sent."""
        self.metrics.sent.labels(message.queue, message.actor).inc()
        return message

    async def process(self, ctx: Context, call_next: CallNext) -> Any:
        """Count the attempt (and its error, if it raises) and time it."""
        message = ctx.message
        bound = self._bound.get((message.queue, message.actor))
        if bound is None:
            bound = self._for(message.queue, message.actor)
        start = message.eta or message.enqueued_at
        bound.latency.add(max(time.time() - start.timestamp(), 0.0))
        bound.messages.inc()
        bound.running += 1
        began = time.perf_counter()
        try:
            result = await call_next(ctx)
        except Exception:
            bound.errors.inc()
            raise
        finally:
            bound.duration.add(time.perf_counter() - began)
            bound.running -= 1
        return result

    async def after_settle(
        self, worker: Worker, delivery: Delivery, outcome: Outcome, reason: str
    ) -> None:
        """Count retries, dead letters (by the reason's kind) and deferrals, as settled."""
        if outcome is Outcome.ACK or outcome is Outcome.REQUEUE:
            return
        name = delivery.message.actor
        # An unknown actor's name is whatever the message says: one label for all of them.
        actor = name if worker.broker.get_actor(name) is not None else "?"
        if outcome is Outcome.RETRY:
            self._for(delivery.message.queue, actor).retries.inc()
        elif outcome is Outcome.DEAD:
            self.dead_letter(delivery.message.queue, actor, reason)
        elif outcome is Outcome.DEFER:
            self._for(delivery.message.queue, actor).deferrals.inc()

    def dead_letter(self, queue: str, actor: str, reason: str) -> None:
        """Count one dead letter of ``actor`` on ``queue`` with ``reason``."""
        self.metrics.dead_letters.labels(queue, actor, reason_kind(reason)).inc()

    # -- gauges set on an interval ---------------------------------------------

    async def on_startup(self, worker: Worker) -> None:
        """Start publishing gauges and histograms, and sampling queue depths if asked."""
        self._tasks.append(asyncio.create_task(self._publish_every_interval()))
        if self.queue_stats_interval is not None:
            queues = worker.queues or worker.broker.queues or ["default"]
            self._tasks.append(asyncio.create_task(self._sample(worker.broker, queues)))

    async def on_shutdown(self, worker: Worker) -> None:
        """Stop both, publishing one last time."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.publish()

    async def _publish_every_interval(self) -> None:
        while True:
            self.publish()
            await asyncio.sleep(PUBLISH_INTERVAL)

    def publish(self) -> None:
        """Publish the in-progress gauges and the histograms' observations so far.

        Both are kept in plain numbers per message and published every
        :data:`PUBLISH_INTERVAL` seconds and at shutdown (a worker that is
        killed loses at most that much of them). Counters are written at once.
        """
        for bound in list(self._bound.values()):
            bound.publish()

    async def _sample(self, broker: Broker, queues: list[str]) -> None:
        assert self.queue_stats_interval is not None
        with _SamplerLock() as lock:
            while True:
                if lock.acquire():
                    for queue in queues:
                        await self.sample_queue(broker, queue)
                await asyncio.sleep(self.queue_stats_interval)

    async def sample_queue(self, broker: Broker, queue: str) -> None:
        """Set ``taskflow_queue_messages`` for ``queue`` from ``broker.stats``."""
        try:
            stats = await broker.stats(queue)
        except Exception as exc:  # a failed sample must not stop the worker
            logger.warning("could not sample the depth of queue %s: %s", queue, exc)
            return
        gauge = self.metrics.queue_messages
        for state, count in zip(QUEUE_STATES, stats, strict=True):
            gauge.labels(queue, state).set(count)
