"""Taskiq in the peer benchmarks: ``RedisStreamBroker`` (taskiq-redis) or ``AioPikaBroker``.

Worker: ``taskiq worker taskiq_peer:broker --workers 1 --max-async-tasks N``
(N = 100 for no-op and latency, 1,000 for I/O; uvloop is installed, so the
worker runs on it). On RabbitMQ ``qos`` (prefetch) is set to N as well, and
the queues are classic.
Producer: ``python taskiq_peer.py single|bulk|latency|cleanup ...``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from _common import AMQP_URL, BROKER, IO_SECONDS, PREFIX, QUEUE, REDIS_URL, done, produce
from _common import started as job_started
from taskiq import AsyncBroker

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "100"))
EXCHANGE = PREFIX + "-x"
DEAD = PREFIX + "-dead"


def make_broker() -> AsyncBroker:
    if BROKER == "rabbitmq":
        from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

        return AioPikaBroker(
            url=AMQP_URL,
            qos=CONCURRENCY,
            exchange=Exchange(name=EXCHANGE),
            task_queues=[Queue(name=QUEUE, type=QueueType.CLASSIC)],
            dead_letter_queue=Queue(name=DEAD, type=QueueType.CLASSIC),
        )
    from taskiq_redis import RedisStreamBroker

    return RedisStreamBroker(url=REDIS_URL, queue_name=QUEUE)


broker = make_broker()


@broker.task(task_name="noop")
async def noop(i: int) -> None:
    job_started()
    await done(i)


@broker.task(task_name="io")
async def io(i: int) -> None:
    job_started()
    await asyncio.sleep(IO_SECONDS)
    await done(i)


@broker.task(task_name="latency")
async def latency(sent_at: float) -> None:
    if job_started(sent_at):
        await done(sent_at)


TASKS: dict[str, Any] = {"noop": noop, "io": io, "latency": latency}


class Client:
    async def open(self) -> None:
        # Declares the stream's consumer group (or the RabbitMQ queues) before
        # anything is sent, so the worker sees the jobs sent before it started.
        await broker.startup()

    async def close(self) -> None:
        await broker.shutdown()

    async def send(self, kind: str, arg: Any) -> None:
        await TASKS[kind].kiq(arg)

    async def send_bulk(self, kind: str, args: list[int]) -> None:
        # No bulk API: concurrent kiq() calls, 1,000 at a time.
        task = TASKS[kind]
        for start in range(0, len(args), 1000):
            await asyncio.gather(*(task.kiq(a) for a in args[start : start + 1000]))

    async def cleanup(self) -> None:
        if BROKER == "rabbitmq":
            import aio_pika

            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                for name in (QUEUE, DEAD):
                    await channel.queue_delete(name)
                await channel.exchange_delete(EXCHANGE)


if __name__ == "__main__":
    produce(Client())
