"""streaq in the peer benchmarks (Redis Streams through coredis).

Worker: ``streaq run streaq_peer:worker --workers 1``, ``concurrency`` = 100
(no-op, latency) or 1,000 (I/O), prefetch at its default (= concurrency),
on uvloop (``anyio_kwargs``), tasks with ``ttl=0`` (no result is stored).
Its per-job INFO log lines are filtered out (``quiet``).
Producer: ``python streaq_peer.py single|bulk|latency|cleanup ...``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from _common import IO_SECONDS, QUEUE, REDIS_URL, done, produce, quiet
from _common import started as job_started
from streaq import Worker

quiet("streaq")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "100"))
worker = Worker(
    redis_url=REDIS_URL,
    concurrency=CONCURRENCY,
    queue_name=QUEUE,
    anyio_kwargs={"use_uvloop": True},
)


@worker.task(ttl=0)
async def noop(i: int) -> None:
    job_started()
    await done(i)


@worker.task(ttl=0)
async def io(i: int) -> None:
    job_started()
    await asyncio.sleep(IO_SECONDS)
    await done(i)


@worker.task(ttl=0)
async def latency(sent_at: float) -> None:
    if job_started(sent_at):
        await done(sent_at)


TASKS: dict[str, Any] = {"noop": noop, "io": io, "latency": latency}


class Client:
    async def open(self) -> None:
        await worker.__aenter__()

    async def close(self) -> None:
        await worker.__aexit__(None, None, None)

    async def send(self, kind: str, arg: Any) -> None:
        await TASKS[kind].enqueue(arg)

    async def send_bulk(self, kind: str, args: list[int]) -> None:
        # enqueue_many(): one pipeline.
        task = TASKS[kind]
        await worker.enqueue_many([task.enqueue(a) for a in args])

    async def cleanup(self) -> None:
        pass


if __name__ == "__main__":
    produce(Client())
