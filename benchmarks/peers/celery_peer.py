"""Celery in the peer benchmarks (Redis transport; sync tasks).

Worker: ``celery -A celery_peer worker -P solo`` for no-op and latency (one
process, no pool hand-off; ``worker_prefetch_multiplier`` 128, as Celery's
optimizing guide advises for many short tasks) and ``-P gevent -c 1000`` for
I/O (Celery's documented pool for I/O-bound work; the default prefetch
multiplier of 4). Results are ignored (``task_ignore_result``); acks are
Celery's default (early, on receipt).
Producer: ``python celery_peer.py single|bulk|latency|cleanup ...``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from _common import IO_SECONDS, QUEUE, REDIS_URL, done_sync, produce
from _common import started as job_started
from celery import Celery

SHORT_TASKS = int(os.environ.get("BENCH_CONCURRENCY", "100")) <= 100

app = Celery("celery_peer", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=128 if SHORT_TASKS else 4,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(i: int) -> None:
    job_started()
    done_sync(i)


@app.task(name="io")
def io(i: int) -> None:
    job_started()
    time.sleep(IO_SECONDS)
    done_sync(i)


@app.task(name="latency")
def latency(sent_at: float) -> None:
    if job_started(sent_at):
        done_sync(sent_at)


TASKS: dict[str, Any] = {"noop": noop, "io": io, "latency": latency}


class Client:
    async def open(self) -> None:
        pass

    async def close(self) -> None:
        app.close()

    async def send(self, kind: str, arg: Any) -> None:
        TASKS[kind].delay(arg)

    async def send_bulk(self, kind: str, args: list[int]) -> None:
        # No bulk API: publish one by one through one producer (group() does the
        # same, with more bookkeeping per message).
        task = TASKS[kind]
        with app.producer_or_acquire() as producer:
            for a in args:
                task.apply_async((a,), producer=producer)

    async def cleanup(self) -> None:
        pass


if __name__ == "__main__":
    produce(Client())
