"""SQLiteBroker throughput: enqueue rates and no-op processing with one Worker in one process.

Run: python benchmarks/sqlite_bench.py [--messages 20000] [--sends 2000] [--synchronous FULL]
[--delayed 200000]

Each scenario uses a fresh database file in a temporary directory:

* ``send``: ``actor.send()`` awaited one after another (one transaction each);
* ``send x100``: 100 tasks in one process, each awaiting ``actor.send()`` one
  after another (a web app under load): concurrent sends share commits;
* ``send_many``: ``actor.send_many()`` in batches of 1,000 (one transaction each);
* ``process``: ``--messages`` no-op messages already enqueued, drained by one
  ``Worker`` (concurrency 100) in this process, timed until ``broker.join``;
* claims: ``--delayed`` messages delayed by an hour, then 200 rounds of
  10 ready messages each claimed by one ``_claim`` of up to 100 (the shape in
  which a claim once read every delayed message), timed per claim;
* idle: a consumer with nothing to do for ``--idle`` seconds (its process CPU
  time), then 20 messages sent one at a time from a second broker on the same
  file (so no in-process wake-up helps), each timed from its commit to its
  pickup.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio

from taskflow import Worker
from taskflow.brokers.sqlite import SQLiteBroker

Sync = Literal["FULL", "NORMAL"]


def make_broker(directory: str, synchronous: Sync) -> tuple[SQLiteBroker, Any]:
    broker = SQLiteBroker(Path(directory) / "bench.sqlite3", synchronous=synchronous)

    @broker.actor(queue="bench")
    async def noop(i: int) -> None:
        return None

    return broker, noop


class Clock:
    """Wall time and this process's CPU time (all threads) since it was made."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def rate(self, count: int) -> tuple[float, float]:
        """Messages per second, and CPU microseconds per message."""
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return count / wall, cpu / count * 1e6


async def send_one_by_one(sends: int, synchronous: Sync) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as directory:
        broker, noop = make_broker(directory, synchronous)
        async with broker:
            clock = Clock()
            for i in range(sends):
                await noop.send(i)
            return clock.rate(sends)


async def send_concurrently(
    sends: int, synchronous: Sync, senders: int = 100
) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as directory:
        broker, noop = make_broker(directory, synchronous)
        async with broker:
            each = sends // senders

            async def sender(first: int) -> None:
                for i in range(first, first + each):
                    await noop.send(i)

            clock = Clock()
            async with anyio.create_task_group() as tg:
                for k in range(senders):
                    tg.start_soon(sender, k * each)
            rate = clock.rate(each * senders)
            assert (await broker.stats("bench")).ready == each * senders
            return rate


async def send_many(messages: int, synchronous: Sync) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as directory:
        broker, noop = make_broker(directory, synchronous)
        async with broker:
            clock = Clock()
            for start in range(0, messages, 1000):
                await noop.send_many([(i,) for i in range(start, min(start + 1000, messages))])
            return clock.rate(messages)


async def process(messages: int, synchronous: Sync, concurrency: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as directory:
        broker, noop = make_broker(directory, synchronous)
        async with broker:
            for start in range(0, messages, 1000):
                await noop.send_many([(i,) for i in range(start, min(start + 1000, messages))])
            clock = Clock()
            async with Worker(broker, ["bench"], concurrency=concurrency):
                await broker.join("bench", timeout=600)
            rate = clock.rate(messages)
            stats = await broker.stats("bench")
            assert stats == (0, 0, 0, 0), stats
        return rate


async def claims(delayed: int, rounds: int = 200) -> float:
    """Milliseconds per claim of 10 ready messages (limit 100) beside ``delayed`` delayed ones."""
    with tempfile.TemporaryDirectory() as directory:
        broker, noop = make_broker(directory, "NORMAL")
        async with broker:
            for start in range(0, delayed, 1000):
                await noop.send_many(
                    [
                        noop.message_with_options(args=(i,), delay=3600)
                        for i in range(start, min(start + 1000, delayed))
                    ]
                )
            spent = 0.0
            for _ in range(rounds):
                await noop.send_many([(i,) for i in range(10)])
                started = time.perf_counter()
                got = await broker._claim("bench", 100)
                spent += time.perf_counter() - started
                assert len(got) == 10, len(got)
                for receipt in got:
                    await receipt.ack()
            return spent / rounds * 1000


async def idle(seconds: float) -> tuple[float, list[float]]:
    """Return the idle consumer's CPU share and the pickup latencies of 20 messages."""
    with tempfile.TemporaryDirectory() as directory:
        consumer_broker, _ = make_broker(directory, "NORMAL")
        producer, noop = make_broker(directory, "NORMAL")
        latencies: list[float] = []
        committed_at = 0.0
        picked = anyio.Event()
        async with consumer_broker, producer:

            async def consume() -> None:
                async for delivery in consumer_broker.consume("bench"):
                    latencies.append(max(time.monotonic() - committed_at, 0.0))
                    await delivery.ack()
                    picked.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await anyio.sleep(0.5)
                cpu = time.process_time()
                await anyio.sleep(seconds)
                share = (time.process_time() - cpu) / seconds
                for i in range(20):
                    picked = anyio.Event()
                    committed_at = time.monotonic() + 3600
                    await noop.send(i)
                    committed_at = time.monotonic()
                    with anyio.fail_after(10):
                        await picked.wait()
                    # Long enough to back off to the slowest poll, and out of step with it.
                    await anyio.sleep(0.25 + random.uniform(0.0, 0.05))
                tg.cancel_scope.cancel()
        return share, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sends", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], action="append")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idling")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--delayed", type=int, default=200_000, help="delayed beside claims")
    args = parser.parse_args()
    backend_options = {"use_uvloop": True} if args.uvloop else {}
    print(f"{'scenario':<12} {'synchronous':<12} {'messages':>9} {'msg/s':>10} {'CPU µs/msg':>11}")
    for synchronous in args.synchronous or ["FULL", "NORMAL"]:
        scenarios: list[tuple[str, int, Callable[[], Awaitable[tuple[float, float]]]]] = [
            ("send", args.sends, partial(send_one_by_one, args.sends, synchronous)),
            (
                "send x100",
                args.messages,
                partial(send_concurrently, args.messages, synchronous),
            ),
            ("send_many", args.messages, partial(send_many, args.messages, synchronous)),
            (
                "process",
                args.messages,
                partial(process, args.messages, synchronous, args.concurrency),
            ),
        ]
        for name, count, scenario in scenarios:
            rate, cpu = anyio.run(scenario, backend_options=backend_options)
            print(
                f"{name:<12} {synchronous:<12} {count:>9} {rate:>10,.0f} {cpu:>11,.0f}", flush=True
            )
    for delayed in (0, args.delayed):
        per_claim = anyio.run(claims, delayed, backend_options=backend_options)
        print(f"claim of 10 ready beside {delayed:,} delayed: {per_claim:.3f} ms", flush=True)
    share, latencies = anyio.run(idle, args.idle, backend_options=backend_options)
    print(f"\nidle consumer: {share:.2%} of a core over {args.idle:.0f} s")
    print(
        f"pickup latency from another broker: median {statistics.median(latencies) * 1000:.0f} ms,"
        f" max {max(latencies) * 1000:.0f} ms ({len(latencies)} messages)"
    )


if __name__ == "__main__":
    main()
