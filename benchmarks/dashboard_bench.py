"""How fast the dashboard's pages render with a big queue (SQLite and Redis).

Run: python benchmarks/dashboard_bench.py [--messages 100000] [--rounds 20]

Fills one queue with ``--messages`` ready messages (plus 1,000 delayed and
1,000 dead), then requests each page ``--rounds`` times through the ASGI app
in process (httpx's ASGITransport, no network) and reports the median and
the slowest: the queues page, a queue's first page of ready messages, a deep
page (offset 50,000), the delayed and dead tabs, and one message's page.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx

from taskflow import Broker
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.dashboard import Dashboard


async def fill(broker: Broker, messages: int) -> str:
    """Fill queue ``big``; return one message id."""

    @broker.actor(queue="big", max_retries=0)
    async def job(n: int, label: str) -> None: ...

    first = ""
    for start in range(0, messages, 5000):
        sent = await job.send_many([(n, f"item {n}") for n in range(start, start + 5000)])
        first = first or sent[0].id
    for n in range(1000):
        await job.send_with_options(args=(n, "later"), delay=3600)
    async for delivery in broker.consume("big", prefetch=500):
        await delivery.nack("failed: benchmark")
        if (await broker.stats("big")).dead >= 1000:
            break
    return first


async def measure(broker: Broker, messages: int, rounds: int) -> list[tuple[str, float, float]]:
    """Median and slowest time of each page, in ms."""
    message_id = await fill(broker, messages)
    pages = {
        "queues page": "/",
        "queue page (ready, page 1)": "/queues/big",
        "queue page (ready, offset 50,000)": "/queues/big?page=1001",
        "delayed tab": "/queues/big?state=delayed",
        "dead tab": "/queues/big?state=dead",
        "message page": f"/messages/{message_id}",
    }
    transport = httpx.ASGITransport(app=Dashboard(broker))
    rows = []
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
        for name, path in pages.items():
            times = []
            for _ in range(rounds):
                began = time.perf_counter()
                response = await client.get(path)
                times.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, (path, response.status_code)
            rows.append((name, statistics.median(times), max(times)))
    return rows


def brokers(tmp: Path) -> dict[str, Any]:
    """The brokers measured; Redis only when it answers."""
    found: dict[str, Any] = {"sqlite": SQLiteBroker(tmp / "bench.sqlite3")}
    try:
        from taskflow.brokers.redis import RedisBroker

        found["redis"] = RedisBroker("redis://127.0.0.1:6379/15", namespace=uuid.uuid4().hex)
    except ImportError:
        pass
    return found


async def main(messages: int, rounds: int) -> None:
    """Print one table per broker."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, broker in brokers(Path(tmp)).items():
            async with broker:
                rows = await measure(broker, messages, rounds)
                print(f"\n{name}: {messages:,} ready, 1,000 delayed, 1,000 dead")
                print("| page | median ms | slowest ms |\n|---|---:|---:|")
                for page, median, slowest in rows:
                    print(f"| {page} | {median:.1f} | {slowest:.1f} |")
                await broker.purge("big")
                await broker.purge_dead("big")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    options = parser.parse_args()
    anyio.run(main, options.messages, options.rounds)
