"""SQLiteBroker throughput: enqueue rates and no-op processing with one Worker in one process.

Run: python benchmarks/sqlite_bench.py [--messages 20000] [--sends 2000] [--synchronous FULL]

Each scenario uses a fresh database file in a temporary directory:

* ``send``: ``actor.send()`` awaited one after another (one transaction each);
* ``send_many``: ``actor.send_many()`` in batches of 1,000 (one transaction each);
* ``process``: ``--messages`` no-op messages already enqueued, drained by one
  ``Worker`` (concurrency 100) in this process, timed until ``broker.join``.
"""

from __future__ import annotations

import argparse
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


async def send_one_by_one(sends: int, synchronous: Sync) -> float:
    with tempfile.TemporaryDirectory() as directory:
        broker, noop = make_broker(directory, synchronous)
        async with broker:
            began = time.perf_counter()
            for i in range(sends):
                await noop.send(i)
            return sends / (time.perf_counter() - began)


async def send_many(messages: int, synchronous: Sync) -> float:
    with tempfile.TemporaryDirectory() as directory:
        broker, noop = make_broker(directory, synchronous)
        async with broker:
            began = time.perf_counter()
            for start in range(0, messages, 1000):
                await noop.send_many([(i,) for i in range(start, min(start + 1000, messages))])
            return messages / (time.perf_counter() - began)


async def process(messages: int, synchronous: Sync, concurrency: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        broker, noop = make_broker(directory, synchronous)
        async with broker:
            for start in range(0, messages, 1000):
                await noop.send_many([(i,) for i in range(start, min(start + 1000, messages))])
            began = time.perf_counter()
            async with Worker(broker, ["bench"], concurrency=concurrency):
                await broker.join("bench", timeout=600)
            elapsed = time.perf_counter() - began
            stats = await broker.stats("bench")
            assert stats == (0, 0, 0, 0), stats
        return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sends", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], action="append")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    backend_options = {"use_uvloop": True} if args.uvloop else {}
    print(f"{'scenario':<12} {'synchronous':<12} {'messages':>9} {'msg/s':>10}")
    for synchronous in args.synchronous or ["FULL", "NORMAL"]:
        scenarios: list[tuple[str, int, Callable[[], Awaitable[float]]]] = [
            ("send", args.sends, partial(send_one_by_one, args.sends, synchronous)),
            ("send_many", args.messages, partial(send_many, args.messages, synchronous)),
            (
                "process",
                args.messages,
                partial(process, args.messages, synchronous, args.concurrency),
            ),
        ]
        for name, count, scenario in scenarios:
            rate = anyio.run(scenario, backend_options=backend_options)
            print(f"{name:<12} {synchronous:<12} {count:>9} {rate:>10,.0f}", flush=True)


if __name__ == "__main__":
    main()
