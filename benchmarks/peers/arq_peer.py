"""arq in the peer benchmarks (Redis only).

Worker: ``arq arq_peer.WorkerSettings``, ``max_jobs`` = 100 (no-op, latency)
or 1,000 (I/O), ``keep_result = 0`` (no result is stored, as in every
library here), the default ``poll_delay`` of 0.5 s. arq does not choose an
event loop itself; this module installs uvloop's policy so that it runs on
uvloop like the others.
Its per-job INFO log lines are filtered out (``quiet``).
Producer: ``python arq_peer.py single|bulk|latency|cleanup ...``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import uvloop
from _common import IO_SECONDS, QUEUE, REDIS_URL, done, produce, quiet
from _common import started as job_started
from arq import ArqRedis, create_pool
from arq.connections import RedisSettings

asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

quiet("arq")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "100"))
SETTINGS = RedisSettings.from_dsn(REDIS_URL)


async def noop(ctx: dict[str, Any], i: int) -> None:
    job_started()
    await done(i)


async def io(ctx: dict[str, Any], i: int) -> None:
    job_started()
    await asyncio.sleep(IO_SECONDS)
    await done(i)


async def latency(ctx: dict[str, Any], sent_at: float) -> None:
    if job_started(sent_at):
        await done(sent_at)


class WorkerSettings:
    functions = [noop, io, latency]
    redis_settings = SETTINGS
    queue_name = QUEUE
    max_jobs = CONCURRENCY
    keep_result = 0


class Client:
    pool: ArqRedis

    async def open(self) -> None:
        self.pool = await create_pool(SETTINGS, default_queue_name=QUEUE)

    async def close(self) -> None:
        await self.pool.aclose()

    async def send(self, kind: str, arg: Any) -> None:
        await self.pool.enqueue_job(kind, arg)

    async def send_bulk(self, kind: str, args: list[int]) -> None:
        # No bulk API: concurrent enqueue_job() calls, 1,000 at a time.
        for start in range(0, len(args), 1000):
            await asyncio.gather(
                *(self.pool.enqueue_job(kind, a) for a in args[start : start + 1000])
            )

    async def cleanup(self) -> None:
        pass


if __name__ == "__main__":
    produce(Client())
