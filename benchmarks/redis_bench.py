"""RedisBroker throughput and memory, with the MemoryBroker alongside for reference.

Run: python benchmarks/redis_bench.py [--url redis://127.0.0.1:6379/15] [--uvloop]
                                      [--messages 20000] [--sends 5000] [--brokers redis,memory]

Each scenario runs in a fresh child process (so its peak RSS is its own), in
a namespace of its own that is deleted afterwards, with one ``Worker``:

* ``send``: ``actor.send()`` awaited one after another;
* ``send_100``: ``--sends`` sends from 100 concurrent tasks of one process;
* ``send_many``: ``actor.send_many()`` in batches of 1,000;
* ``noop``: ``--messages`` messages already enqueued, drained by a no-op async
  actor at concurrency 100, timed from worker start to the last message done;
* ``io``: the same with ``await asyncio.sleep(0.05)`` per message at
  concurrency 1,000 (so the ceiling is 20,000 msg/s).

Besides msg/s it prints the benchmark process's CPU time per message: on a
shared machine the rate moves with the load, the CPU cost much less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
import uuid
from typing import Any

import anyio

from taskflow import Broker, Worker
from taskflow.brokers.memory import MemoryBroker

SCENARIOS = ("send", "send_100", "send_many", "noop", "io")


def make_broker(kind: str, url: str, namespace: str) -> Broker:
    if kind == "memory":
        return MemoryBroker()
    from taskflow.brokers.redis import RedisBroker

    return RedisBroker(url, namespace=namespace)


async def fill(actor: Any, messages: int) -> None:
    for start in range(0, messages, 1000):
        await actor.send_many([(i,) for i in range(start, min(start + 1000, messages))])


async def run(kind: str, scenario: str, url: str, messages: int, sends: int) -> tuple[float, float]:
    """Return (messages per second, this process's CPU microseconds per message)."""
    broker = make_broker(kind, url, f"bench-{uuid.uuid4().hex[:8]}")
    done = anyio.Event()
    count = 0

    @broker.actor(queue="bench", max_retries=0)
    async def noop(i: int) -> None:
        nonlocal count
        count += 1
        if count == messages:
            done.set()

    @broker.actor(queue="bench", max_retries=0)
    async def io(i: int) -> None:
        nonlocal count
        await asyncio.sleep(0.05)
        count += 1
        if count == messages:
            done.set()

    async with broker:
        try:
            if scenario == "send":
                began, cpu = time.perf_counter(), time.process_time()
                for i in range(sends):
                    await noop.send(i)
                return rates(sends, began, cpu)
            if scenario == "send_100":
                began, cpu = time.perf_counter(), time.process_time()
                await send_concurrently(noop, sends, 100)
                return rates(sends, began, cpu)
            if scenario == "send_many":
                began, cpu = time.perf_counter(), time.process_time()
                await fill(noop, messages)
                return rates(messages, began, cpu)
            actor, concurrency = (noop, 100) if scenario == "noop" else (io, 1000)
            await fill(actor, messages)
            began, cpu = time.perf_counter(), time.process_time()
            async with Worker(broker, ["bench"], concurrency=concurrency):
                with anyio.fail_after(600):
                    await done.wait()
                result = rates(messages, began, cpu)
                await broker.join("bench", timeout=60)
            assert count == messages, (count, messages)
            return result
        finally:
            await broker.purge("bench")
            if kind == "redis":
                await cleanup(broker)


async def send_concurrently(actor: Any, sends: int, tasks: int) -> None:
    async def sender(start: int) -> None:
        for i in range(start, sends, tasks):
            await actor.send(i)

    async with anyio.create_task_group() as tg:
        for start in range(tasks):
            tg.start_soon(sender, start)


def rates(count: int, began: float, cpu: float) -> tuple[float, float]:
    elapsed = time.perf_counter() - began
    return count / elapsed, (time.process_time() - cpu) / count * 1e6


async def cleanup(broker: Any) -> None:
    client = broker._client
    keys = [k async for k in client.scan_iter(match=broker._keys.prefix + ":*", count=1000)]
    if keys:
        await client.delete(*keys)


def child(args: argparse.Namespace) -> None:
    backend_options = {"use_uvloop": True} if args.uvloop else {}
    rate, cpu_us = anyio.run(
        run,
        args.broker,
        args.scenario,
        args.url,
        args.messages,
        args.sends,
        backend_options=backend_options,
    )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rate": rate, "cpu_us": cpu_us, "peak_rss_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sends", type=int, default=5_000)
    parser.add_argument("--brokers", default="redis,memory")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        child(args)
        return
    print(
        f"{'broker':<8} {'scenario':<10} {'messages':>9} {'msg/s':>10}"
        f" {'CPU µs/msg':>11} {'peak RSS MiB':>13}"
    )
    for kind in args.brokers.split(","):
        for scenario in args.scenarios.split(","):
            command = [
                sys.executable,
                __file__,
                f"--broker={kind}",
                f"--scenario={scenario}",
                f"--url={args.url}",
                f"--messages={args.messages}",
                f"--sends={args.sends}",
            ]
            if args.uvloop:
                command.append("--uvloop")
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            count = (
                args.sends if scenario.startswith("send_1") or scenario == "send" else args.messages
            )
            print(
                f"{kind:<8} {scenario:<10} {count:>9} {result['rate']:>10,.0f}"
                f" {result['cpu_us']:>11.1f} {result['peak_rss_mib']:>13.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
