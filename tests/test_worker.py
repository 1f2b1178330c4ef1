from __future__ import annotations

import contextvars
import datetime as dt
import threading
import time
from typing import Any

import anyio
import msgspec
import pytest

from taskflow import Middleware, Worker, current_message
from taskflow._time import utcnow
from taskflow.brokers.memory import MemoryBroker
from taskflow.middleware import Context, Outcome, default_middleware

pytestmark = pytest.mark.anyio


async def test_sync_actor_never_delays_async_ones() -> None:
    broker = MemoryBroker()
    release = threading.Event()
    done: list[int] = []

    @broker.actor(queue="q")
    def blocker() -> None:
        release.wait(10)

    @broker.actor(queue="q")
    async def quick(i: int) -> None:
        done.append(i)

    await blocker.send()
    await quick.send_many([(i,) for i in range(50)])
    try:
        async with Worker(broker, ["q"], concurrency=10, threads=1):
            with anyio.fail_after(5):
                while len(done) < 50:
                    await anyio.sleep(0.01)
            # Given all async messages done, Expect the sync one still blocked.
            assert not release.is_set()
            assert (await broker.stats("q")).in_flight == 1
            release.set()
            await broker.join("q", timeout=5)
    finally:
        release.set()


async def test_concurrency_bounds_messages_in_flight() -> None:
    broker = MemoryBroker()
    running = 0
    peak = 0
    gate = anyio.Event()

    @broker.actor(queue="q")
    async def hold() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    await hold.send_many([() for _ in range(20)])
    async with Worker(broker, ["q"], concurrency=3, prefetch=1):
        with anyio.fail_after(5):
            while running < 3:
                await anyio.sleep(0.01)
        assert running == 3
        gate.set()
        await broker.join("q", timeout=5)
    assert peak == 3


async def test_graceful_stop_finishes_running_and_returns_prefetched() -> None:
    broker = MemoryBroker()
    started = 0
    finished = 0
    gate = anyio.Event()

    @broker.actor(queue="q")
    async def work() -> None:
        nonlocal started, finished
        started += 1
        await gate.wait()
        finished += 1

    await work.send_many([() for _ in range(10)])
    worker = Worker(broker, ["q"], concurrency=2, prefetch=5, shutdown_timeout=10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(5):
            while started < 2:
                await anyio.sleep(0.01)
        worker.stop()
        # Given stop was asked, Expect the unstarted messages back in the queue at once.
        with anyio.fail_after(5):
            while (await broker.stats("q")).ready != 8:
                await anyio.sleep(0.01)
        assert finished == 0
        gate.set()
    assert (started, finished) == (2, 2)
    assert await broker.stats("q") == (8, 0, 0, 0)


async def test_shutdown_timeout_cancels_and_requeues_without_retry() -> None:
    broker = MemoryBroker()
    cancelled = anyio.Event()

    @broker.actor(queue="q")
    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    sent = await forever.send()
    worker = Worker(broker, ["q"], shutdown_timeout=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(5):
            while (await broker.stats("q")).in_flight == 0:
                await anyio.sleep(0.01)
        worker.stop()
    assert cancelled.is_set()
    assert await broker.stats("q") == (1, 0, 0, 0)
    async for delivery in broker.consume("q"):
        assert delivery.message.id == sent.id
        assert delivery.message.retries == 0
        assert delivery.delivery_count == 2
        break


async def test_shutdown_timeout_interrupts_sync_actors() -> None:
    broker = MemoryBroker()
    entered = threading.Event()
    left: list[str] = []

    @broker.actor(queue="q")
    def spin() -> None:
        entered.set()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                time.sleep(0.005)
        except BaseException as exc:
            left.append(type(exc).__name__)
            raise

    await spin.send()
    worker = Worker(broker, ["q"], shutdown_timeout=0.2)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await anyio.to_thread.run_sync(entered.wait, 5)
            worker.stop()
        with anyio.fail_after(5):
            while not left:
                await anyio.sleep(0.01)
    assert left == ["WorkerShutdown"]
    assert await broker.stats("q") == (1, 0, 0, 0)


async def test_current_message_and_contextvars_reach_sync_actors() -> None:
    broker = MemoryBroker()
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: dict[str, Any] = {}

    @broker.actor(queue="q")
    def sync_actor() -> None:
        m = current_message()
        seen["sync"] = (m.id if m else None, var.get())

    @broker.actor(queue="q")
    async def async_actor() -> None:
        m = current_message()
        seen["async"] = m.id if m else None

    class SetVar(Middleware):
        async def process(self, ctx: Context, call_next: Any) -> Any:
            token = var.set("from-middleware")
            try:
                return await call_next(ctx)
            finally:
                var.reset(token)

    broker.middleware = (SetVar(), *broker.middleware)
    a = await sync_actor.send()
    b = await async_actor.send()
    async with Worker(broker, ["q"]):
        await broker.join("q", timeout=5)
    assert seen == {"sync": (a.id, "from-middleware"), "async": b.id}
    assert current_message() is None


async def test_failing_startup_hook_aborts_start() -> None:
    class Broken(Middleware):
        async def on_startup(self, worker: Worker) -> None:
            raise RuntimeError("no config")

    broker = MemoryBroker(middleware=[Broken(), *default_middleware()])

    @broker.actor
    async def f() -> None: ...

    with pytest.raises(RuntimeError, match="no config"):
        with anyio.fail_after(5):
            await Worker(broker).run()


async def test_failing_shutdown_hook_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Middleware):
        async def on_shutdown(self, worker: Worker) -> None:
            raise RuntimeError("cleanup failed")

    broker = MemoryBroker(middleware=[Broken(), *default_middleware()])

    @broker.actor
    async def f() -> None: ...

    await f.send()
    async with Worker(broker):
        await broker.join("default", timeout=5)
    assert "Broken failed on shutdown" in caplog.text


async def test_stop_before_run_returns_at_once() -> None:
    broker = MemoryBroker()
    worker = Worker(broker, ["q"])
    worker.stop()
    with anyio.fail_after(5):
        await worker.run()


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        Worker(MemoryBroker(), concurrency=0)


async def test_a_retry_never_stores_a_message_that_grew_past_what_a_delivery_accepts() -> None:
    broker = MemoryBroker(max_message_size=2048)

    class Grow(Middleware):
        async def process(self, ctx: Context, call_next: Any) -> Any:
            ctx.message.options[f"note{ctx.message.retries}"] = "n" * 600
            return await call_next(ctx)

    broker.middleware = (Grow(), *broker.middleware)

    @broker.actor(max_retries=50, min_backoff=0.001, max_backoff=0.002)
    async def flaky() -> None:
        raise RuntimeError("again")

    await flaky.send()
    async with Worker(broker):
        await broker.join("default", timeout=10)
    (letter,) = await broker.dead_letters("default")
    assert letter.reason.startswith("too_large: ") and "after a retry" in letter.reason
    assert letter.message is not None and letter.message.retries < 5


async def test_age_limit_dead_letter_is_not_counted_as_processed() -> None:
    broker = MemoryBroker()

    @broker.actor(max_age=60)
    async def stale() -> None:
        raise AssertionError("a message past its max_age must not run")

    message = stale.message()
    old = msgspec.structs.replace(message, enqueued_at=utcnow() - dt.timedelta(hours=1))
    await broker.enqueue([old])
    async with Worker(broker) as worker:
        await broker.join("default", timeout=10)
    [dead] = await broker.dead_letters("default")
    assert dead.reason.startswith("max_age_exceeded")
    assert (worker.processed, worker.failed) == (0, 0)


class _DeferOnce(Middleware):
    """Defers each message once, without running it, then lets it through."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.seen: set[str] = set()
        self.runs: list[tuple[int, int]] = []

    async def process(self, ctx: Context, call_next: Any) -> Any:
        if ctx.message.id not in self.seen:
            self.seen.add(ctx.message.id)
            assert ctx.defer(self.delay)
            return None
        self.runs.append((ctx.message.retries, ctx.delivery.delivery_count))
        return await call_next(ctx)


async def test_a_deferred_message_runs_later_without_a_retry_or_a_delivery_counted() -> None:
    defer = _DeferOnce(0.2)
    broker = MemoryBroker(middleware=[defer, *default_middleware()], results=True)
    ran = anyio.Event()

    @broker.actor(store_results=True)
    async def work() -> int:
        ran.set()
        return 1

    message = await work.send()
    started = time.monotonic()
    async with Worker(broker) as worker:
        with anyio.fail_after(10):
            await ran.wait()
        await broker.join("default", timeout=10)
    assert time.monotonic() - started >= 0.2
    assert defer.runs == [(0, 1)]
    assert worker.processed == 1
    assert await message.result(timeout=1) == 1


async def test_the_first_marked_outcome_wins() -> None:
    marks: list[tuple[str, bool]] = []

    class LateDefer(Middleware):
        async def process(self, ctx: Context, call_next: Any) -> Any:
            try:
                return await call_next(ctx)
            finally:
                marks.append((ctx.outcome, ctx.defer(5.0)))

    broker = MemoryBroker(middleware=[LateDefer(), *default_middleware()])

    @broker.actor(max_retries=0)
    async def boom() -> None:
        raise ValueError("boom")

    await boom.send()
    async with Worker(broker) as worker:
        await broker.join("default", timeout=10)
    assert marks == [(Outcome.DEAD, False)]
    [dead] = await broker.dead_letters("default")
    assert dead.reason.startswith("max_retries_exceeded: ValueError: boom")
    assert (worker.processed, worker.failed) == (0, 1)


async def test_a_failure_without_retries_is_dead_lettered_by_the_settler() -> None:
    broker = MemoryBroker(middleware=[])

    @broker.actor
    async def boom() -> None:
        raise ValueError("no retries here")

    await boom.send()
    async with Worker(broker) as worker:
        await broker.join("default", timeout=10)
    [dead] = await broker.dead_letters("default")
    assert dead.reason == "failed: ValueError: no retries here"
    assert worker.failed == 1
