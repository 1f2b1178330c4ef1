"""Two real worker processes sharing one limiter, on Redis and on SQLite.

Workers run as ``python -m taskflow worker tests.apps.rate_limit_app:broker``;
their actors append every start and end to a ledger (a file per process),
and the tests measure concurrency, windows and buckets from its timestamps.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from taskflow import Broker
from taskflow.rate_limits import Barrier, ConcurrentRateLimiter
from taskflow.rate_limits.backends import RateLimitBackend
from tests.apps import rate_limit_app as app
from tests.conftest import REDIS_URL, require_service

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """A ``taskflow worker`` (supervisor and one child) in its own process group."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskflow",
                    "worker",
                    "tests.apps.rate_limit_app:broker",
                    "--queues",
                    app.QUEUE,
                    *args,
                ],
                cwd=REPO,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture(params=["redis", "sqlite"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    values = {app.BROKER_ENV: request.param, app.LEDGER_ENV: str(ledger)}
    if request.param == "redis":
        url = require_service("Redis", REDIS_URL, 6379)
        values[app.NAMESPACE_ENV] = f"tf-test-rl-{secrets.token_hex(4)}"
        values["TASKFLOW_TEST_REDIS_URL"] = url
    else:
        values[app.SQLITE_ENV] = str(tmp_path / "broker.sqlite3")
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield values
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if request.param == "redis":
        from tests.apps.redis_app import delete_namespace

        delete_namespace(values["TASKFLOW_TEST_REDIS_URL"], values[app.NAMESPACE_ENV])


@pytest.fixture
async def producer(env: dict[str, str]) -> AsyncIterator[tuple[Broker, RateLimitBackend]]:
    """The app's broker and backend in this process, built from the same environment."""
    broker, backend = app.build()
    async with broker:
        yield broker, backend
    await backend.close()


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def ledger(env: dict[str, str]) -> list[app.Row]:
    return app.read_ledger(Path(env[app.LEDGER_ENV]))


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def run_two_workers(
    start_worker: Callable[..., WorkerProcess],
    broker: Broker,
    actor: str,
    calls: list[tuple[Any, ...]],
    timeout: float = 60,
) -> None:
    """Start two workers, wait until both consume, then send ``calls`` and drain the queue.

    Sending only once both consume, so that one process cannot take
    everything while the other is still starting.
    """
    # Two slots each: four in all, one more than the limit of 3, so the limit
    # binds, and reaching it takes both processes.
    workers = [start_worker("--concurrency", "2"), start_worker("--concurrency", "2")]
    await wait_for(
        lambda: all(" consuming " in w.log.read_text(errors="replace") for w in workers),
        60,
        "both workers to consume",
    )
    await broker.actors[actor].send_many(calls)
    await broker.join(app.QUEUE, timeout=timeout)


@pytest.mark.parametrize("actor", ["limited", "capped"])
async def test_two_processes_never_exceed_the_limit(
    actor: str,
    env: dict[str, str],
    producer: tuple[Broker, RateLimitBackend],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # Given: 30 messages of 0.1 s, limit 3, two processes of 2 slots each
    broker, _ = producer
    # When
    await run_two_workers(start_worker, broker, actor, [(n, 0.1) for n in range(30)])
    # Expect: all ran once, both processes took part, at most 3 at once (and 3 reached)
    rows = ledger(env)
    ends = [r for r in rows if r.event == "end"]
    assert sorted(r.n for r in ends) == list(range(30))
    assert len({r.pid for r in ends}) == 2
    assert app.peak_overlap(rows) == app.LIMIT
    # Every deferred message completed with no retry used and no delivery counted
    assert {(r.retries, r.deliveries) for r in ends} == {(0, 1)}
    assert await broker.dead_letters(app.QUEUE) == []


async def test_window_limit_across_processes_measured_by_timestamps(
    env: dict[str, str],
    producer: tuple[Broker, RateLimitBackend],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    broker, _ = producer
    await run_two_workers(start_worker, broker, "windowed", [(n,) for n in range(15)])
    stamps = [r.at for r in ledger(env) if r.event == "start"]
    assert len(stamps) == 15
    # No sliding window of 1 s holds more than 5 runs. A run records its time
    # after its limiter was taken, a little later on a busy host: 0.1 s of slack.
    for i in range(len(stamps) - app.WINDOW_LIMIT):
        assert stamps[i + app.WINDOW_LIMIT] - stamps[i] >= app.WINDOW - 0.1, stamps
    assert stamps[-1] - stamps[0] >= 2 * app.WINDOW - 0.1


async def test_bucket_limit_across_processes_measured_by_timestamps(
    env: dict[str, str],
    producer: tuple[Broker, RateLimitBackend],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    broker, _ = producer
    await run_two_workers(start_worker, broker, "bucketed", [(n,) for n in range(15)])
    stamps = [r.at for r in ledger(env) if r.event == "start"]
    assert len(stamps) == 15
    per_bucket: dict[int, int] = {}
    for at in stamps:
        # Recorded after the limiter was taken: up to 0.1 s late on a busy host,
        # so a run this close after a boundary may belong to the bucket before.
        if int((at - 0.1) // app.WINDOW) == int(at // app.WINDOW):
            per_bucket[int(at // app.WINDOW)] = per_bucket.get(int(at // app.WINDOW), 0) + 1
    # Each fixed 1 s bucket (by the server's clock, the host's here) holds at most 5.
    assert max(per_bucket.values()) <= app.WINDOW_LIMIT
    # 15 needed 3 buckets. They are fixed to the clock, so the first can begin
    # just before a boundary: the span covers at least the whole middle one.
    assert len({int(at // app.WINDOW) for at in stamps}) >= 3
    assert stamps[-1] - stamps[0] >= app.WINDOW - 0.1


async def test_per_tenant_keys_are_independent_across_processes(
    env: dict[str, str],
    producer: tuple[Broker, RateLimitBackend],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    broker, _ = producer
    # Tenants 1 and 2, four messages each, a limit of one per tenant.
    await run_two_workers(start_worker, broker, "tenant", [(t, 0.2) for t in (1, 2) * 4])
    rows = ledger(env)
    assert len([r for r in rows if r.event == "end"]) == 8
    for t in (1, 2):
        assert app.peak_overlap([r for r in rows if r.n == t]) == 1
    assert app.peak_overlap(rows) == 2  # one tenant never held the other back


async def test_sigkilled_holder_is_released_after_ttl(
    env: dict[str, str],
    producer: tuple[Broker, RateLimitBackend],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    broker, backend = producer
    fragile = ConcurrentRateLimiter(backend, "fragile", limit=1, ttl=app.FRAGILE_TTL)
    # Given: worker A holds the only slot of "fragile" (ttl 2 s)
    await broker.actors["hold"].send(1)
    worker = start_worker("--concurrency", "2")
    await wait_for(lambda: any(r.event == "holding" for r in ledger(env)), 30, "a holder")
    assert await fragile.try_acquire() is None
    # When: A is SIGKILLed, so it never gives the slot back
    worker.kill()
    assert worker.process.returncode == -signal.SIGKILL
    killed = time.monotonic()
    assert await fragile.try_acquire() is None  # the fault: still held by the dead process
    # Expect: the slot comes free within its ttl (plus slack), not before most of it passed
    with anyio.fail_after(app.FRAGILE_TTL + 3):
        while (holder := await fragile.try_acquire()) is None:
            await anyio.sleep(0.05)
    waited = time.monotonic() - killed
    await fragile.release(holder)
    assert app.FRAGILE_TTL - 1.0 <= waited <= app.FRAGILE_TTL + 1.0


def start_party(n: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """One party of the app's barrier, in a process of its own."""
    command = [sys.executable, "-m", "tests.apps.rate_limit_app", "party", str(n)]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, **env})


async def test_barrier_releases_parties_in_four_processes(
    env: dict[str, str], producer: tuple[Broker, RateLimitBackend]
) -> None:
    _, backend = producer
    assert await Barrier(backend, app.BARRIER_KEY, ttl=60).create(parties=4)
    parties = []
    for n in range(4):
        parties.append(start_party(n, env))
        await anyio.sleep(0.2 * n)  # arrivals spread out: nobody may leave before the last
    with anyio.fail_after(60):
        while any(p.poll() is None for p in parties):
            await anyio.sleep(0.05)
    assert [p.returncode for p in parties] == [0, 0, 0, 0]
    rows = ledger(env)
    arrivals = [r.at for r in rows if r.event == "arrive"]
    released = [r for r in rows if r.event == "released"]
    assert len(arrivals) == 4 and len(released) == 4
    assert len({r.pid for r in released}) == 4
    assert min(r.at for r in released) >= max(arrivals)
