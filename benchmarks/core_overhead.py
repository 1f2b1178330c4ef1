"""Messages per second through one Worker on the MemoryBroker (no server involved).

Run: python benchmarks/core_overhead.py [--messages 20000] [--concurrency 100]
"""

from __future__ import annotations

import argparse
import time

import anyio

from taskflow import Worker
from taskflow.brokers.memory import MemoryBroker


async def measure(kind: str, messages: int, concurrency: int) -> float:
    broker = MemoryBroker()

    if kind == "async":

        @broker.actor(queue="bench")
        async def noop(i: int) -> None:
            return None

        actor = noop
    else:

        @broker.actor(queue="bench")
        def sync_noop(i: int) -> None:
            return None

        actor = sync_noop

    async with broker:
        for start in range(0, messages, 1000):
            await actor.send_many([(i,) for i in range(start, min(start + 1000, messages))])
        began = time.perf_counter()
        async with Worker(broker, ["bench"], concurrency=concurrency):
            await broker.join("bench", timeout=600)
        elapsed = time.perf_counter() - began
    return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    backend_options = {"use_uvloop": True} if args.uvloop else {}
    print(f"{'actor':<8} {'messages':>9} {'msg/s':>10}")
    for kind in ("async", "sync"):
        rate = anyio.run(
            measure, kind, args.messages, args.concurrency, backend_options=backend_options
        )
        print(f"{kind:<8} {args.messages:>9} {rate:>10,.0f}")


if __name__ == "__main__":
    main()
