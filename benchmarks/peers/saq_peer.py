"""SAQ in the peer benchmarks (Redis queue).

Worker: ``saq saq_peer.settings --workers 1``, ``concurrency`` = 100 (no-op,
latency) or 1,000 (I/O). SAQ keeps each job's record for its default ``ttl``
(600 s); it has no switch to skip that. SAQ does not choose an event loop
itself; this module installs uvloop's policy so that it runs on uvloop like
the others.
Producer: ``python saq_peer.py single|bulk|latency|cleanup ...``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import uvloop
from _common import IO_SECONDS, QUEUE, REDIS_URL, done, produce
from _common import started as job_started
from saq import Queue

asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "100"))
queue = Queue.from_url(REDIS_URL, name=QUEUE)


async def noop(ctx: dict[str, Any], *, i: int) -> None:
    job_started()
    await done(i)


async def io(ctx: dict[str, Any], *, i: int) -> None:
    job_started()
    await asyncio.sleep(IO_SECONDS)
    await done(i)


async def latency(ctx: dict[str, Any], *, i: float) -> None:
    if job_started(i):
        await done(i)


settings = {"queue": queue, "functions": [noop, io, latency], "concurrency": CONCURRENCY}


class Client:
    async def open(self) -> None:
        await queue.connect()

    async def close(self) -> None:
        await queue.disconnect()

    async def send(self, kind: str, arg: Any) -> None:
        await queue.enqueue(kind, i=arg)

    async def send_bulk(self, kind: str, args: list[int]) -> None:
        # No bulk API (map() waits for results): concurrent enqueue() calls, 1,000 at a time.
        for start in range(0, len(args), 1000):
            await asyncio.gather(*(queue.enqueue(kind, i=a) for a in args[start : start + 1000]))

    async def cleanup(self) -> None:
        pass


if __name__ == "__main__":
    produce(Client())
