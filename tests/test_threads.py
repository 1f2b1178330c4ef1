"""Sync actors in a real worker: time limits from the thread's start, no hoarding, stop."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from taskflow import Worker
from taskflow.brokers.memory import MemoryBroker

pytestmark = pytest.mark.anyio


def busy(seconds: float) -> None:
    """Run Python code for ``seconds`` (interruptible, unlike one long sleep in C)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.005)


async def test_the_time_limit_clock_starts_when_the_thread_starts() -> None:
    broker = MemoryBroker()
    runs: list[tuple[float, float]] = []

    @broker.actor(time_limit=0.4, max_retries=0)
    def slow_sync() -> None:
        began = time.monotonic()
        try:
            busy(1.2)
        finally:
            runs.append((began, time.monotonic()))

    # Given three messages that each outlast the limit, queued for one thread
    await slow_sync.send_many([() for _ in range(3)])
    async with Worker(broker, threads=1):
        await broker.join("default", timeout=10)

    # Expect each interrupted 0.4 s after it started, even those that waited longer
    assert len(runs) == 3
    assert all(end - began < 0.7 for began, end in runs), runs
    letters = await broker.dead_letters("default")
    assert len(letters) == 3
    for letter in letters:
        assert "TimeLimitExceeded: slow_sync ran over its time limit of 0.4 s" in letter.reason


async def test_a_wait_for_a_thread_is_not_charged_to_the_call() -> None:
    broker = MemoryBroker()
    finished: list[int] = []

    @broker.actor(time_limit=0.6, max_retries=0)
    def job(i: int) -> None:
        busy(0.4)
        finished.append(i)

    # Given two jobs within their limit, the second waiting 0.4 s for the one thread
    await job.send_many([(1,), (2,)])
    async with Worker(broker, threads=1):
        await broker.join("default", timeout=10)

    # Expect both to finish: the wait does not count
    assert sorted(finished) == [1, 2]
    assert await broker.dead_letters("default") == []


async def test_a_queue_of_sync_actors_leases_no_more_than_its_threads() -> None:
    broker = MemoryBroker()
    release = threading.Event()
    started = 0

    @broker.actor(queue="q")
    def hold() -> None:
        nonlocal started
        started += 1
        release.wait(10)

    await hold.send_many([() for _ in range(10)])
    try:
        async with Worker(broker, ["q"], concurrency=100, threads=2):
            with anyio.fail_after(5):
                while started < 2:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.1)  # time for a worker that hoards to lease more
            stats = await broker.stats("q")
            assert (stats.in_flight, stats.ready) == (2, 8)
            release.set()
            await broker.join("q", timeout=10)
    finally:
        release.set()


async def test_graceful_stop_hands_back_sync_messages_waiting_for_a_thread() -> None:
    broker = MemoryBroker()
    release = threading.Event()
    entered = threading.Event()
    runs = 0

    @broker.actor(queue="q")
    def hold() -> None:
        nonlocal runs
        runs += 1
        entered.set()
        release.wait(10)

    @broker.actor(queue="q")
    async def quick() -> None:  # an async actor on the queue too: processors take sync work
        pass

    await hold.send_many([() for _ in range(5)])
    try:
        async with anyio.create_task_group() as tg:
            worker = Worker(broker, ["q"], concurrency=10, threads=1)
            await tg.start(worker.run)
            await anyio.to_thread.run_sync(entered.wait, 5)
            # When the worker stops while one runs and four wait for the thread
            worker.stop()
            # Expect the four back in the queue at once, the running one still running
            with anyio.fail_after(5):
                while (await broker.stats("q")).ready < 4:
                    await anyio.sleep(0.01)
            assert (await broker.stats("q")).in_flight == 1
            release.set()
        assert runs == 1
        stats = await broker.stats("q")
        assert (stats.ready, stats.in_flight) == (4, 0)
    finally:
        release.set()
