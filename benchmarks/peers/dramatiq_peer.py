"""Dramatiq in the peer benchmarks (sync actors; its workers are threads, or greenlets).

Worker: ``dramatiq dramatiq_peer -p 1 -t 8`` (no-op, latency: the default 8
threads) or ``dramatiq-gevent dramatiq_peer -p 1 -t 1000`` (I/O: 1,000
greenlets, as Dramatiq documents for I/O-bound work; ``time.sleep`` is
cooperative under gevent's monkey patching).
Producer: ``python dramatiq_peer.py single|bulk|latency|cleanup ...``.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from _common import AMQP_URL, BROKER, IO_SECONDS, PREFIX, QUEUE, REDIS_URL, done_sync, produce
from _common import started as job_started

if BROKER == "rabbitmq":
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: dramatiq.Broker = RabbitmqBroker(url=AMQP_URL)
else:
    import redis
    from dramatiq.brokers.redis import RedisBroker

    # redis-py's default pool fails past 100 connections; 1,000 greenlets
    # settling at once must wait for a connection instead.
    pool = redis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=100, timeout=None)
    broker = RedisBroker(client=redis.Redis(connection_pool=pool), namespace=PREFIX)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def noop(i: int) -> None:
    job_started()
    done_sync(i)


@dramatiq.actor(queue_name=QUEUE)
def io(i: int) -> None:
    job_started()
    time.sleep(IO_SECONDS)
    done_sync(i)


@dramatiq.actor(queue_name=QUEUE)
def latency(sent_at: float) -> None:
    if job_started(sent_at):
        done_sync(sent_at)


ACTORS: dict[str, Any] = {"noop": noop, "io": io, "latency": latency}


class Client:
    async def open(self) -> None:
        pass

    async def close(self) -> None:
        broker.close()

    async def send(self, kind: str, arg: Any) -> None:
        ACTORS[kind].send(arg)

    async def send_bulk(self, kind: str, args: list[int]) -> None:
        # No bulk API: group(...).run() sends one by one, as this does.
        actor = ACTORS[kind]
        for a in args:
            actor.send(a)

    async def cleanup(self) -> None:
        if BROKER == "rabbitmq":
            channel = broker.channel
            for name in (QUEUE, f"{QUEUE}.DQ", f"{QUEUE}.XQ"):
                channel.queue_delete(name)


if __name__ == "__main__":
    produce(Client())
