"""taskflow in the peer benchmarks: the app the worker runs, and the producer commands.

Worker: ``taskflow worker taskflow_peer:broker --processes 1 --concurrency N``
(uvloop is installed in this virtualenv, so the worker runs on it).
Producer: ``python taskflow_peer.py single|bulk|latency|cleanup ...`` (see ``_common``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import AMQP_URL, BROKER, IO_SECONDS, PREFIX, QUEUE, REDIS_URL, done, produce
from _common import started as job_started

from taskflow import Broker


def make_broker() -> Broker:
    if BROKER == "rabbitmq":
        from taskflow.brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(AMQP_URL, prefix=PREFIX + ".")
    from taskflow.brokers.redis import RedisBroker

    return RedisBroker(REDIS_URL, namespace=PREFIX)


broker = make_broker()


@broker.actor(queue=QUEUE)
async def noop(i: int) -> None:
    job_started()
    await done(i)


@broker.actor(queue=QUEUE)
async def io(i: int) -> None:
    job_started()
    await asyncio.sleep(IO_SECONDS)
    await done(i)


@broker.actor(queue=QUEUE)
async def latency(sent_at: float) -> None:
    if job_started(sent_at):
        await done(sent_at)


ACTORS: dict[str, Any] = {"noop": noop, "io": io, "latency": latency}


class Client:
    async def open(self) -> None:
        await broker.connect()

    async def close(self) -> None:
        await broker.close()

    async def send(self, kind: str, arg: Any) -> None:
        await ACTORS[kind].send(arg)

    async def send_bulk(self, kind: str, args: list[int]) -> None:
        # One call: the broker pipelines batches of 1,000 in one round trip.
        await ACTORS[kind].send_many([(a,) for a in args])

    async def cleanup(self) -> None:
        if BROKER == "rabbitmq":
            from taskflow.brokers.rabbitmq import RabbitMQBroker

            assert isinstance(broker, RabbitMQBroker)
            await broker.delete_queue(QUEUE)
            await broker.delete_exchanges()


if __name__ == "__main__":
    produce(Client())
