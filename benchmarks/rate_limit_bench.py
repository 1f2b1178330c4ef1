"""Rate limits: the cost of one acquire/release, and throughput under a full limiter.

Run: python benchmarks/rate_limit_bench.py [overhead|throughput|all]
         [--url redis://HOST:PORT/DB] [--kinds redis,sqlite]
         [--iterations 5000] [--messages 10000] [--task-time 0.02]
         [--limit 50] [--concurrency 100]

``overhead``: ``try_acquire()`` then ``release()`` of a ``ConcurrentRateLimiter``
one after another, on a private ``redis-server`` (started here on a free
port, so its ``INFO commandstats`` count only this run's round trips) and
on a SQLite file, with a plain ``PING`` (Redis) and a bare ``BEGIN
IMMEDIATE``/``COMMIT`` (SQLite) as floors. Prints microseconds per
operation and server commands per operation.

``throughput``: ``--messages`` messages of ``--task-time`` seconds
(``await asyncio.sleep``) through two worker processes of ``--concurrency``
each (on a private ``redis-server`` unless ``--url`` names one, or a
SQLite file), once without a limit and once with ``rate_limit=ConcurrentRateLimiter(
limit=--limit)``, side by side in one run. The rate is the number of
messages over the time from the first start to the last end, both recorded
by the actors. Target: the limited rate is within 15 % of
``min(unlimited rate, limit / task time)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import redis

from taskflow import Broker, Worker
from taskflow.rate_limits import ConcurrentRateLimiter
from taskflow.rate_limits.backends import RateLimitBackend, RedisBackend, SQLiteBackend

QUEUE = "bench"
DURATIONS: list[float] = []  # of each task in this process, as the actor saw it


# -- overhead ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free loopback port, without persistence."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="rl-bench-")
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            time.sleep(0.05)
        client.close()
        yield url
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def commands(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        stats: dict[str, Any] = client.info("commandstats")
        # Commands sent by clients; those a script runs inside Redis are no round trip.
        sent = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script|load")
        return sum(int(stats[k]["calls"]) for k in sent if k in stats)
    finally:
        client.close()


async def time_limiter(
    backend: RateLimitBackend, iterations: int, floor: Callable[[], Awaitable[Any]]
) -> tuple[float, float, float]:
    """Microseconds per floor operation, try_acquire and release, interleaved."""
    limiter = ConcurrentRateLimiter(backend, f"bench-{uuid.uuid4().hex[:6]}", limit=50, ttl=60)
    for _ in range(200):  # warm up: connection, script load
        holder = await limiter.try_acquire()
        assert holder is not None
        await limiter.release(holder)
        await floor()
    base = acquire = release = 0.0
    for _ in range(iterations):
        t0 = time.perf_counter()
        await floor()
        t1 = time.perf_counter()
        holder = await limiter.try_acquire()
        t2 = time.perf_counter()
        assert holder is not None
        await limiter.release(holder)
        t3 = time.perf_counter()
        base += t1 - t0
        acquire += t2 - t1
        release += t3 - t2
    return base / iterations * 1e6, acquire / iterations * 1e6, release / iterations * 1e6


async def redis_overhead(iterations: int) -> dict[str, Any]:
    with private_redis() as url:
        backend = RedisBackend(url, namespace="bench")
        before = commands(url)
        floor, acquire, release = await time_limiter(backend, iterations, backend.client.ping)
        per_op = (commands(url) - before) / (2 * (iterations + 200))
        await backend.close()
    return {"floor_us": floor, "acquire_us": acquire, "release_us": release, "commands": per_op}


async def sqlite_overhead(iterations: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "limits.sqlite3"
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE t (x)")

        def bare() -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (1)")
            db.execute("COMMIT")

        async def floor() -> None:
            await anyio.to_thread.run_sync(bare)

        backend = SQLiteBackend(path)
        base, acquire, release = await time_limiter(backend, iterations, floor)
        await backend.close()
        db.close()
    # One transaction per operation, by construction (SQLiteBackend._transaction).
    return {"floor_us": base, "acquire_us": acquire, "release_us": release, "commands": 1.0}


async def overhead(kinds: list[str], iterations: int) -> None:
    print(f"acquire/release overhead, {iterations} sequential pairs")
    print(
        f"{'backend':8} {'floor us':>9} {'acquire us':>11} {'release us':>11} {'round trips/op':>15}"
    )
    for kind in kinds:
        measure = redis_overhead if kind == "redis" else sqlite_overhead
        r = await measure(iterations)
        print(
            f"{kind:8} {r['floor_us']:9.0f} {r['acquire_us']:11.0f} {r['release_us']:11.0f} "
            f"{r['commands']:15.2f}"
        )
    print("floor: Redis PING / SQLite BEGIN IMMEDIATE+INSERT+COMMIT through a thread")


# -- throughput ---------------------------------------------------------------


def make_broker(kind: str, target: str) -> tuple[Broker, RateLimitBackend]:
    if kind == "redis":
        from taskflow.brokers.redis import RedisBroker

        url, namespace = target.rsplit("#", 1)
        return RedisBroker(url, namespace=namespace), RedisBackend(url, namespace=namespace)
    from taskflow.brokers.sqlite import SQLiteBroker

    broker = SQLiteBroker(target)
    return broker, SQLiteBackend(broker)


def declare(broker: Broker, backend: RateLimitBackend, limit: int, task_time: float) -> Any:
    limiter = ConcurrentRateLimiter(backend, "bench", limit=limit, ttl=60)
    stamps: list[float] = []
    durations = DURATIONS

    async def work(i: int) -> None:
        began = time.time()
        stamps.append(began)
        await asyncio.sleep(task_time)
        stamps.append(time.time())
        durations.append(stamps[-1] - began)

    broker.actor(name="free", queue=QUEUE, max_retries=0)(work)
    broker.actor(name="limited", queue=QUEUE, max_retries=0, rate_limit=limiter)(work)
    return stamps


def watch_deferrals(broker: Broker) -> list[float]:
    """Record the delay of every deferral this process makes."""
    from taskflow.middleware import RateLimits

    delays: list[float] = []
    for m in broker.middleware:
        if isinstance(m, RateLimits):
            pacer = m._pacer
            full = pacer.full

            def recorded(exc: Any, full: Any = full) -> float:
                delay: float = full(exc)
                delays.append(delay)
                return delay

            pacer.full = recorded  # type: ignore[method-assign]
    return delays


async def worker_main(
    kind: str, target: str, limit: int, task_time: float, concurrency: int
) -> None:
    """One worker process: run until the queue is empty, print first start, last end, count."""
    broker, backend = make_broker(kind, target)
    stamps = declare(broker, backend, limit, task_time)
    delays = watch_deferrals(broker)
    cpu = time.process_time()
    async with broker, Worker(broker, [QUEUE], concurrency=concurrency):
        print("ready", flush=True)
        with anyio.move_on_after(600):
            while not stamps:
                await anyio.sleep(0.01)
        await broker.join(QUEUE, timeout=600)
    result = {
        "first": min(stamps),
        "last": max(stamps),
        "count": len(DURATIONS),
        "cpu": time.process_time() - cpu,
        "deferrals": len(delays),
        "task_ms": sum(DURATIONS) / len(DURATIONS) * 1000,
        "mean_delay": sum(delays) / len(delays) if delays else 0.0,
    }
    print(json.dumps(result), flush=True)
    await backend.close()


async def run_workers(command: list[str]) -> list[str]:
    """Run two worker processes to the end; return their outputs."""
    async with anyio.create_task_group() as tg:
        outputs: list[str] = ["", ""]

        async def one(i: int) -> None:
            done = await anyio.run_process(command, check=True)
            outputs[i] = done.stdout.decode()

        for i in range(2):
            tg.start_soon(one, i)
    return outputs


async def one_run(args: argparse.Namespace, kind: str, actor: str) -> dict[str, float]:
    target = (
        f"{args.url}#rl-bench-{uuid.uuid4().hex[:8]}"
        if kind == "redis"
        else str(Path(tempfile.mkdtemp(prefix="rl-bench-")) / "broker.sqlite3")
    )
    broker, backend = make_broker(kind, target)
    declare(broker, backend, args.limit, args.task_time)
    async with broker:
        for start in range(0, args.messages, 1000):
            await broker.actors[actor].send_many(
                [(i,) for i in range(start, min(start + 1000, args.messages))]
            )
    command = [
        sys.executable,
        __file__,
        "_worker",
        kind,
        target,
        str(args.limit),
        str(args.task_time),
        str(args.concurrency),
    ]
    outputs = await run_workers(command)
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    if kind == "redis":
        client = redis.Redis.from_url(args.url)
        namespace = target.rsplit("#", 1)[1]
        keys = list(client.scan_iter(f"*{namespace}*"))
        if keys:
            client.delete(*keys)
        client.close()
    count = sum(r["count"] for r in results)
    span = max(r["last"] for r in results) - min(r["first"] for r in results)
    print(
        "   ",
        kind,
        actor,
        [(r["deferrals"], round(r["mean_delay"], 3), round(r["task_ms"], 1)) for r in results],
    )
    return {
        "rate": count / span,
        "count": count,
        "span": span,
        "cpu_us": sum(r["cpu"] for r in results) / count * 1e6,
    }


async def throughput(args: argparse.Namespace, kinds: list[str]) -> None:
    ceiling = args.limit / args.task_time
    print(
        f"{args.messages} messages of {args.task_time * 1000:.0f} ms, two worker processes of "
        f"concurrency {args.concurrency}; limit {args.limit} -> ceiling {ceiling:.0f} msg/s"
    )
    print(
        f"{'broker':7} {'unlimited/s':>12} {'limited/s':>10} {'target/s':>9} {'ratio':>6} "
        f"{'cpu us/msg (free, limited)':>28}"
    )
    for kind in kinds:
        with contextlib.ExitStack() as stack:
            if kind == "redis" and args.url is None:
                args.url = stack.enter_context(private_redis())
            free = await one_run(args, kind, "free")
            limited = await one_run(args, kind, "limited")
            assert free["count"] == limited["count"] == args.messages, (free, limited)
            target = min(free["rate"], ceiling)
            print(
                f"{kind:7} {free['rate']:12.0f} {limited['rate']:10.0f} {target:9.0f} "
                f"{limited['rate'] / target:6.2f} {free['cpu_us']:13.0f} {limited['cpu_us']:14.0f}"
            )


def main() -> None:
    if sys.argv[1:2] == ["_worker"]:
        kind, target, limit, task_time, concurrency = sys.argv[2:7]
        anyio.run(worker_main, kind, target, int(limit), float(task_time), int(concurrency))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=["overhead", "throughput", "all"])
    parser.add_argument(
        "--url", default=None, help="Redis for the throughput runs (default: a private server)"
    )
    parser.add_argument("--kinds", default="redis,sqlite")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--task-time", type=float, default=0.02)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    if args.what in ("overhead", "all"):
        anyio.run(overhead, kinds, args.iterations)
    if args.what in ("throughput", "all"):
        anyio.run(throughput, args, kinds)


if __name__ == "__main__":
    main()
