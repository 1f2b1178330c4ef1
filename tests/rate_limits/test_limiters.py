"""The limiters and the barrier on every backend: counts, windows, buckets, ttl, keys."""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from pathlib import Path

import anyio
import pytest

import taskflow
from taskflow.brokers.memory import MemoryBroker
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.rate_limits import (
    Barrier,
    BucketRateLimiter,
    ConcurrentRateLimiter,
    WindowRateLimiter,
)
from taskflow.rate_limits.backends import (
    MemoryBackend,
    RateLimitBackend,
    RedisBackend,
    SQLiteBackend,
)

pytestmark = pytest.mark.anyio


async def test_concurrent_allows_limit_holders_then_raises(backend: RateLimitBackend) -> None:
    limiter = ConcurrentRateLimiter(backend, "api", limit=2, ttl=30)
    async with limiter.acquire() as first, limiter.acquire() as second:
        assert first and second
        with pytest.raises(taskflow.RateLimitExceeded) as info:
            async with limiter.acquire():
                pytest.fail("a third holder got in")
        assert info.value.key == "api"
        async with limiter.acquire(raise_on_failure=False) as third:
            assert third is False
    # Both given back: two fit again.
    async with limiter.acquire(), limiter.acquire():
        pass


async def test_concurrent_holders_measured_under_contention(backend: RateLimitBackend) -> None:
    limiter = ConcurrentRateLimiter(backend, "contended", limit=3, ttl=30)
    inside = peak = done = 0

    async def attempt() -> None:
        nonlocal inside, peak, done
        while True:
            async with limiter.acquire(raise_on_failure=False) as got:
                if got:
                    inside += 1
                    peak = max(peak, inside)
                    await anyio.sleep(0.01)
                    inside -= 1
                    done += 1
                    return
            await anyio.sleep(0.002)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(attempt)
    assert done == 20
    assert peak == 3


async def test_released_when_the_block_raises_or_is_cancelled(backend: RateLimitBackend) -> None:
    limiter = ConcurrentRateLimiter(backend, "raising", limit=1, ttl=30)
    with pytest.raises(ZeroDivisionError):
        async with limiter.acquire():
            1 / 0  # noqa: B018
    with anyio.move_on_after(0.05):
        async with limiter.acquire():
            await anyio.sleep(10)
    async with limiter.acquire() as got:
        assert got


async def test_a_holder_that_never_releases_expires_after_ttl(backend: RateLimitBackend) -> None:
    limiter = ConcurrentRateLimiter(backend, "dead-holder", limit=1, ttl=0.5)
    assert await limiter.try_acquire() is not None  # never released: its process "died"
    assert await limiter.try_acquire() is None
    started = time.monotonic()
    with anyio.fail_after(5):
        while await limiter.try_acquire() is None:
            await anyio.sleep(0.02)
    assert time.monotonic() - started >= 0.3


async def test_a_dead_holder_expires_while_others_keep_using_the_key(
    backend: RateLimitBackend,
) -> None:
    # Given: limit 2, one holder that never gives its slot back
    limiter = ConcurrentRateLimiter(backend, "busy", limit=2, ttl=0.6)
    assert await limiter.try_acquire() is not None
    # When: others take and give back the second slot without pause
    deadline = time.monotonic() + 3
    both = False
    while time.monotonic() < deadline and not both:
        first = await limiter.try_acquire()
        assert first is not None
        second = await limiter.try_acquire()
        both = second is not None
        await limiter.release(first)
        if second is not None:
            await limiter.release(second)
    # Expect: the dead holder's slot came back (its ttl is its own, not refreshed by the others)
    assert both


async def test_waiters_are_told_their_place_in_the_line(backend: RateLimitBackend) -> None:
    # Given: a full limit, and three deferred messages meeting it in turn
    limiter = ConcurrentRateLimiter(backend, "line", limit=1, ttl=30)
    held = await limiter.acquire_nowait()
    places = {}
    for waiter in ("m1", "m2", "m3"):
        with pytest.raises(taskflow.RateLimitExceeded) as info:
            await limiter.acquire_nowait(waiter=waiter)
        places[waiter] = info.value.ahead
    assert places == {"m1": 0, "m2": 1, "m3": 2}
    # m2 comes back first and finds it still full: it keeps its place
    with pytest.raises(taskflow.RateLimitExceeded) as info:
        await limiter.acquire_nowait(waiter="m2")
    assert info.value.ahead == 1
    # When: m1 gets its turn
    await limiter.release(held)
    first = await limiter.acquire_nowait(waiter="m1")
    # Expect: it left the line, so the others moved up
    with pytest.raises(taskflow.RateLimitExceeded) as info:
        await limiter.acquire_nowait(waiter="m3")
    assert info.value.ahead == 1
    await limiter.release(first)


async def test_keys_are_independent(backend: RateLimitBackend) -> None:
    a = ConcurrentRateLimiter(backend, "tenant:a", limit=1)
    b = ConcurrentRateLimiter(backend, "tenant:b", limit=1)
    async with a.acquire():
        assert await a.try_acquire() is None
        async with b.acquire() as got:
            assert got


async def test_window_is_sliding_measured_by_timestamps(backend: RateLimitBackend) -> None:
    limiter = WindowRateLimiter(backend, "smtp", limit=5, window=0.5)
    # The backend reads its clock somewhere between before and after.
    taken: list[tuple[float, float]] = []
    with anyio.fail_after(10):
        while len(taken) < 15:
            before = time.monotonic()
            if await limiter.try_acquire() is not None:
                taken.append((before, time.monotonic()))
            else:
                await anyio.sleep(0.005)
    # No sliding 0.5 s span holds more than 5 acquisitions.
    for (first, _), (_, sixth) in zip(taken, taken[5:], strict=False):
        assert sixth - first >= 0.5 - 0.005, taken
    # And it is not slower than the limit: 15 in about 2 windows, not 3 or more.
    assert taken[-1][0] - taken[0][1] < 1.5


async def test_window_reports_when_there_will_be_room(backend: RateLimitBackend) -> None:
    limiter = WindowRateLimiter(backend, "hint", limit=1, window=2.0)
    assert await limiter.try_acquire() is not None
    with pytest.raises(taskflow.RateLimitExceeded) as info:
        async with limiter.acquire():
            pass
    assert info.value.retry_after is not None
    assert 1.0 < info.value.retry_after <= 2.0


async def test_bucket_counts_per_fixed_bucket(backend: RateLimitBackend) -> None:
    limiter = BucketRateLimiter(backend, "sms", limit=3, bucket=0.5)
    # Start right after a bucket boundary so the first burst falls in one bucket.
    await anyio.sleep(0.5 - time.time() % 0.5 + 0.02)
    taken: list[tuple[float, float]] = []
    with anyio.fail_after(10):
        while len(taken) < 9:
            before = time.time()
            if await limiter.try_acquire() is not None:
                taken.append((before, time.time()))
            else:
                await anyio.sleep(0.005)
    per_bucket: dict[int, int] = {}
    for before, after in taken:
        if int(before // 0.5) == int(after // 0.5):  # surely in this bucket
            per_bucket[int(after // 0.5)] = per_bucket.get(int(after // 0.5), 0) + 1
    assert max(per_bucket.values()) <= 3
    assert taken[-1][1] - taken[0][0] >= 0.95  # 9 needed 3 buckets, begun 0.02 s into one


async def test_acquire_sync_from_threads(backend: RateLimitBackend) -> None:
    limiter = ConcurrentRateLimiter(backend, "sync", limit=2, ttl=30)
    lock = threading.Lock()
    inside = peak = 0
    refused = 0

    def work() -> None:
        nonlocal inside, peak, refused
        for _ in range(10):
            with limiter.acquire_sync(raise_on_failure=False) as got:
                if not got:
                    with lock:
                        refused += 1
                    time.sleep(0.002)
                    continue
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                time.sleep(0.005)
                with lock:
                    inside -= 1

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(anyio.to_thread.run_sync, work)
    assert peak == 2
    assert refused > 0
    with pytest.raises(taskflow.RateLimitExceeded):
        with limiter.acquire_sync(), limiter.acquire_sync(), limiter.acquire_sync():
            pass


async def test_barrier_releases_every_party_at_once(backend: RateLimitBackend) -> None:
    barrier = Barrier(backend, "batch-42", ttl=30)
    assert await barrier.create(parties=3) is True
    assert await barrier.create(parties=3) is False
    released: list[tuple[bool, float]] = []

    async def party(delay: float) -> None:
        await anyio.sleep(delay)
        released.append((await barrier.wait(timeout=10), time.monotonic()))

    started = time.monotonic()
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            for delay in (0.0, 0.1, 0.4):
                tg.start_soon(party, delay)
    assert [ok for ok, _ in released] == [True, True, True]
    # No party left before the last one arrived.
    assert min(at for _, at in released) - started >= 0.4 - 0.02


async def test_barrier_wait_times_out(backend: RateLimitBackend) -> None:
    barrier = Barrier(backend, "short", ttl=30)
    await barrier.create(parties=2)
    started = time.monotonic()
    assert await barrier.wait(timeout=0.3) is False
    assert 0.25 <= time.monotonic() - started < 3


async def test_barrier_that_does_not_exist(backend: RateLimitBackend) -> None:
    with pytest.raises(LookupError):
        await Barrier(backend, "never-created").wait(timeout=0.1)


def test_bad_arguments() -> None:
    backend = MemoryBackend()
    with pytest.raises(ValueError, match="limit"):
        ConcurrentRateLimiter(backend, "k", limit=0)
    with pytest.raises(ValueError, match="window"):
        WindowRateLimiter(backend, "k", limit=1, window=0)
    with pytest.raises(ValueError, match="bucket"):
        BucketRateLimiter(backend, "k", limit=1, bucket=-1)
    with pytest.raises(TypeError, match="backend"):
        ConcurrentRateLimiter("redis://x", "k", limit=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parties"):
        anyio.run(Barrier(backend, "b").create, 0)


async def test_redis_backend_from_a_client_shares_the_url_backends_state(redis_url: str) -> None:
    import redis.asyncio as aioredis

    namespace = f"tf-test-rl-{secrets.token_hex(4)}"
    client = aioredis.Redis.from_url(redis_url)
    by_url = RedisBackend(redis_url, namespace=namespace)
    by_client = RedisBackend(client, namespace=namespace)
    try:
        a = ConcurrentRateLimiter(by_url, "client-shared", limit=1)
        b = ConcurrentRateLimiter(by_client, "client-shared", limit=1)
        held = await a.try_acquire()
        assert held is not None
        assert await b.try_acquire() is None
        with b.acquire_sync(raise_on_failure=False) as got:
            assert got is False  # the blocking client reaches the same server and db
        await a.release(held)
        assert await b.try_acquire() is not None
    finally:
        await client.delete(*[k async for k in client.scan_iter(f"{namespace}:*")])
        await by_url.close()
        await by_client.close()
        by_client.sync_client.close()
        await client.aclose()


def test_sqlite_backend_shares_the_brokers_file(tmp_path: Path) -> None:
    broker = SQLiteBroker(tmp_path / "app.sqlite3")
    backend = SQLiteBackend(broker)
    assert backend.path == Path(broker.path)
    limiter = ConcurrentRateLimiter(backend, "file", limit=1)
    with limiter.acquire_sync():
        with sqlite3.connect(broker.path) as db:
            assert db.execute("SELECT COUNT(*) FROM taskflow_rate_holders").fetchone() == (1,)
    with pytest.raises(TypeError, match="SQLiteBroker"):
        SQLiteBackend(MemoryBroker())
