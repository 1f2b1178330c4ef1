"""The basics in one file: actors, send, retries, delays, results and a Worker.

Run: python examples/quickstart.py

Everything runs in this one process on the in-memory broker. For real work,
swap the broker for ``SQLiteBroker("tasks.sqlite3")`` (no server) or
``RedisBroker("redis://...")`` and run ``taskflow worker quickstart:broker``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import taskflow
from taskflow.brokers.memory import MemoryBroker

broker = MemoryBroker(results=True)
attempts: dict[str, int] = {}


@broker.actor(store_results=True)
async def add(x: int, y: int) -> int:
    """An async actor: awaited on the worker's event loop."""
    await asyncio.sleep(0.01)
    return x + y


@broker.actor(store_results=True)
def checksum(text: str) -> int:
    """A sync actor: runs in the worker's thread pool, never stalling the loop."""
    time.sleep(0.01)
    return sum(text.encode()) % 997


@broker.actor(max_retries=3, min_backoff=0.05, max_backoff=0.2, store_results=True)
async def flaky(key: str) -> str:
    """Fails twice, then succeeds: retried with exponential backoff."""
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] < 3:
        raise ConnectionError(f"attempt {attempts[key]} failed")
    return f"{key} succeeded after {attempts[key]} attempts"


async def main() -> None:
    async with broker, taskflow.Worker(broker, concurrency=50):
        total = await add.send(1, 2)
        sums = await add.send_many([(i, i) for i in range(5)])
        digest = await checksum.send("taskflow")
        later = await add.send_with_options(args=(40, 2), delay=0.3)
        retried = await flaky.send("job-1")

        print("add(1, 2)              =", await total.result(timeout=5))
        print("add(i, i) for i in 0..4 =", [await m.result(timeout=5) for m in sums])
        print("checksum('taskflow')   =", await digest.result(timeout=5))
        print("delayed add(40, 2)     =", await later.result(timeout=5))
        print("flaky('job-1')         =", await retried.result(timeout=5))
        await broker.join("default", timeout=5)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
