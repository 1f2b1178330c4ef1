"""The Prometheus middleware in one process, with a registry of the test's own."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry

from taskflow import Message, RateLimitExceeded, Reject, Retry, Worker, current_message
from taskflow.brokers.memory import MemoryBroker
from taskflow.middleware import Prometheus, default_middleware
from taskflow.middleware.prometheus import DURATION_BUCKETS

pytestmark = pytest.mark.anyio


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def stack(registry: CollectorRegistry, **options: float) -> MemoryBroker:
    return MemoryBroker(
        middleware=[Prometheus(registry=registry, **options), *default_middleware()]
    )


async def test_counts_as_dramatiq_does() -> None:
    registry = CollectorRegistry()
    broker = stack(registry)

    @broker.actor(queue="q")
    async def ok() -> None:
        pass

    @broker.actor(queue="q", max_retries=3)
    async def flaky() -> None:
        message = current_message()
        assert message is not None
        if message.retries < 2:
            raise Retry(delay=0)

    @broker.actor(queue="q", max_retries=1, min_backoff=0.001, max_backoff=0.002)
    async def broken() -> None:
        raise ValueError("no")

    @broker.actor(queue="q")
    async def refuse() -> None:
        raise Reject("nope")

    for _ in range(5):
        await ok.send()
    await flaky.send()
    await broken.send()
    await refuse.send()
    async with Worker(broker, ["q"]):
        await broker.join("q", timeout=10)

    def v(name: str, actor: str, **labels: str) -> float:
        return value(registry, name, queue="q", actor=actor, **labels)

    assert v("taskflow_messages_sent_total", "ok") == 5
    assert v("taskflow_messages_total", "ok") == 5
    assert v("taskflow_messages_total", "flaky") == 3  # every attempt
    assert v("taskflow_message_errors_total", "flaky") == 2
    assert v("taskflow_message_retries_total", "flaky") == 2
    assert v("taskflow_message_retries_total", "broken") == 1
    assert v("taskflow_message_errors_total", "broken") == 2
    assert v("taskflow_message_dead_letters_total", "broken", reason="max_retries_exceeded") == 1
    assert v("taskflow_message_dead_letters_total", "refuse", reason="rejected") == 1
    assert v("taskflow_message_dead_letters_total", "ok", reason="max_retries_exceeded") == 0
    assert v("taskflow_messages_in_progress", "ok") == 0
    assert v("taskflow_message_duration_seconds_count", "ok") == 5
    assert v("taskflow_message_latency_seconds_count", "flaky") == 3


async def test_in_progress_while_running() -> None:
    registry = CollectorRegistry()
    broker = stack(registry)
    started = anyio.Event()
    release = anyio.Event()

    @broker.actor
    async def hold() -> None:
        started.set()
        await release.wait()

    def in_progress() -> float:
        return value(registry, "taskflow_messages_in_progress", queue="default", actor="hold")

    await hold.send()
    async with Worker(broker):
        with anyio.fail_after(10):
            await started.wait()
            while in_progress() != 1:  # published on an interval
                await anyio.sleep(0.05)
        release.set()
        await broker.join("default", timeout=10)
    assert in_progress() == 0  # published once more at shutdown


async def test_counts_every_settlement_of_the_settler() -> None:
    registry = CollectorRegistry()
    broker = stack(registry)
    attempts = 0

    @broker.actor(queue="q")
    async def limited() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RateLimitExceeded("partner-api", retry_after=0.01)

    @broker.actor(queue="q", max_age=0.001)
    async def stale() -> None:
        pass

    @broker.actor(queue="q")
    async def typed(n: int) -> None:
        pass

    await limited.send()
    await stale.send_with_options(eta=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60))
    await typed.send_with_options(args=("not a number",))
    await broker.enqueue([Message(queue="q", actor="gone")])  # no such actor here
    async with Worker(broker, ["q"]):
        await broker.join("q", timeout=10)

    def dead(actor: str, reason: str) -> float:
        return value(
            registry, "taskflow_message_dead_letters_total", queue="q", actor=actor, reason=reason
        )

    labels = {"queue": "q", "actor": "limited"}
    assert value(registry, "taskflow_message_deferrals_total", **labels) == 1
    assert value(registry, "taskflow_message_retries_total", **labels) == 0
    assert value(registry, "taskflow_messages_total", **labels) == 2
    assert dead("stale", "max_age_exceeded") == 1
    assert dead("typed", "invalid_arguments") == 1  # refused before the stack
    assert dead("?", "unknown_actor") == 1  # one label for every unknown name


def test_buckets_cover_a_millisecond_and_ten_minutes() -> None:
    assert DURATION_BUCKETS[0] <= 0.001
    assert any(0.001 < b <= 0.005 for b in DURATION_BUCKETS)
    assert 600.0 in DURATION_BUCKETS and DURATION_BUCKETS[-1] > 600.0


async def test_samples_queue_depths_on_an_interval() -> None:
    registry = CollectorRegistry()
    broker = stack(registry, queue_stats_interval=0.05)

    @broker.actor(queue="depth")
    async def later() -> None:
        pass

    await later.send_with_options(delay=3600)
    await later.send_with_options(delay=3600)

    def delayed() -> float:
        return value(registry, "taskflow_queue_messages", queue="depth", state="delayed")

    async with Worker(broker, ["depth"]):
        with anyio.fail_after(10):
            while delayed() != 2:
                await anyio.sleep(0.02)
        await broker.purge("depth")
        with anyio.fail_after(10):
            while delayed() != 0:  # sampled again, not once at start
                await anyio.sleep(0.02)


def test_one_registry_holds_one_set_of_metrics() -> None:
    registry = CollectorRegistry()
    first, second = Prometheus(registry=registry), Prometheus(registry=registry)
    assert first.metrics is second.metrics


def test_tallied_observations_publish_as_observe_would() -> None:
    from prometheus_client import Histogram

    from taskflow.middleware.prometheus import _Tally

    registry = CollectorRegistry()
    tallied = Histogram("tallied", "", registry=registry, buckets=DURATION_BUCKETS)
    observed = Histogram("observed", "", registry=registry, buckets=DURATION_BUCKETS)
    tally = _Tally(tallied, DURATION_BUCKETS)
    values = [0.0, 0.0005, 0.001, 0.0011, 0.003, 0.3, 599.0, 600.0, 601.0, 10**6]
    for v in values:
        tally.add(v)
        observed.observe(v)
    assert value(registry, "tallied_count") == 0  # nothing until published
    tally.publish()
    tally.publish()  # publishing twice adds nothing
    for bound in (*DURATION_BUCKETS, float("inf")):
        le = str(bound) if bound != float("inf") else "+Inf"
        assert value(registry, "tallied_bucket", le=le) == value(
            registry, "observed_bucket", le=le
        ), le
    assert value(registry, "tallied_sum") == value(registry, "observed_sum")
    assert value(registry, "tallied_bucket", le="0.001") == 3


def test_one_sampler_at_a_time_among_processes_sharing_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskflow.middleware.prometheus import MULTIPROC_ENV, _SamplerLock

    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with _SamplerLock() as first:
        with _SamplerLock() as second:  # another open file, as another process has
            assert first.acquire()
            assert not second.acquire()
            assert first.acquire()  # the holder keeps it
        with _SamplerLock() as third:
            assert not third.acquire()
    with _SamplerLock() as after:  # the holder is gone: the lock is free
        assert after.acquire()


def test_without_a_shared_directory_every_process_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskflow.middleware.prometheus import MULTIPROC_ENV, _SamplerLock

    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with _SamplerLock() as lock:
        assert lock.acquire()
