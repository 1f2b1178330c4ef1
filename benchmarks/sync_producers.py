"""Sync producers against the async ``send``: 8 senders at once, sends/s and latency per call.

Async: 8 tasks on one event loop, each awaiting ``actor.send`` in a loop.
Sync: 8 threads, each calling ``actor.send_sync`` in a loop (the broker's I/O
runs on its one background event-loop thread). Both run on the same kind of
loop (uvloop when installed) and send the same messages to the same server,
in alternating rounds; the medians of the rounds are
printed, with the ratios sync / async.

Run: python benchmarks/sync_producers.py [--broker memory|redis|sqlite|both|all] [--sends 2000] [--rounds 3]
(Redis at TASKFLOW_BENCH_REDIS_URL, default redis://127.0.0.1:6379/15; the
SQLite file in a temporary directory; memory: no I/O, the hand-off alone.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import taskflow
from taskflow import _sync

SENDERS = 8


@dataclass
class Run:
    rate: float  # sends per second, all senders together
    p50: float  # seconds per call
    p99: float


def summarize(latencies: list[float], elapsed: float) -> Run:
    latencies.sort()
    return Run(
        rate=len(latencies) / elapsed,
        p50=latencies[len(latencies) // 2],
        p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )


def declare(broker: taskflow.Broker) -> taskflow.Actor[[int], None]:
    @broker.actor(queue="bench")
    async def noop(i: int) -> None:
        return None

    return noop


async def run_async(make: Callable[[], taskflow.Broker], sends: int) -> Run:
    broker = make()
    actor = declare(broker)
    per_sender = sends // SENDERS
    latencies: list[float] = []

    async def sender() -> None:
        for i in range(per_sender):
            began = time.perf_counter()
            await actor.send(i)
            latencies.append(time.perf_counter() - began)

    async with broker:
        await actor.send(-1)  # connected and warm
        began = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(SENDERS)))
        elapsed = time.perf_counter() - began
        await broker.purge("bench")
    return summarize(latencies, elapsed)


def run_sync(make: Callable[[], taskflow.Broker], sends: int) -> Run:
    broker = make()
    actor = declare(broker)
    per_sender = sends // SENDERS
    latencies: list[float] = []
    start = threading.Barrier(SENDERS + 1)

    def sender() -> None:
        start.wait()
        for i in range(per_sender):
            began = time.perf_counter()
            actor.send_sync(i)
            latencies.append(time.perf_counter() - began)

    actor.send_sync(-1)  # the loop thread started, connected and warm
    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    _sync.run(broker, lambda: broker.purge("bench"), sync_form="", await_form="")
    broker.close_sync()
    return summarize(latencies, elapsed)


def brokers(kind: str, directory: Path) -> dict[str, Callable[[], taskflow.Broker]]:
    redis_url = os.environ.get("TASKFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    namespace = f"tf-bench-sync-{uuid.uuid4().hex[:8]}"
    made = {
        "memory": lambda: taskflow.broker_from_url("memory://"),
        "redis": lambda: taskflow.broker_from_url(redis_url, namespace=namespace),
        "sqlite": lambda: taskflow.broker_from_url(f"sqlite:///{directory / 'bench.sqlite3'}"),
    }
    if kind == "all":
        return made
    return {k: made[k] for k in ("redis", "sqlite")} if kind == "both" else {kind: made[kind]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--broker", choices=["memory", "redis", "sqlite", "both", "all"], default="all"
    )
    parser.add_argument("--sends", type=int, default=2000, help="sends per round, all senders")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    loop = "uvloop" if _sync.loop_factory() else "asyncio"
    print(
        f"{'broker':<7} {'mode':<11} {'sends/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f"  {SENDERS} senders, {args.sends} sends per round, median of {args.rounds} rounds, {loop}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in brokers(args.broker, Path(tmp)).items():
            runs: dict[str, list[Run]] = {"async send": [], "send_sync": []}
            for _ in range(args.rounds):
                with asyncio.Runner(loop_factory=_sync.loop_factory()) as runner:
                    runs["async send"].append(runner.run(run_async(make, args.sends)))
                runs["send_sync"].append(run_sync(make, args.sends))
            medians = {
                mode: Run(
                    *(statistics.median(getattr(r, f) for r in rs) for f in ("rate", "p50", "p99"))
                )
                for mode, rs in runs.items()
            }
            for mode, m in medians.items():
                print(
                    f"{name:<7} {mode:<11} {m.rate:>9,.0f} {m.p50 * 1e3:>8.2f} {m.p99 * 1e3:>8.2f}"
                )
            a, s = medians["async send"], medians["send_sync"]
            print(
                f"{name:<7} {'ratio':<11} {a.rate / s.rate:>8.2f}x {s.p50 / a.p50:>7.2f}x"
                f" {s.p99 / a.p99:>7.2f}x  (async / sync for sends/s; sync / async per call)"
            )


if __name__ == "__main__":
    main()
