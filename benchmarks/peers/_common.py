"""What every peer script shares: settings from the environment and the job tally.

Standard library only: this module is imported inside each library's own
virtualenv, by the producer (``python <lib>_peer.py ...``) and by the worker
process that the library's own CLI starts (``benchmarks/peers`` is put on
``PYTHONPATH`` for it).

Every library counts finished jobs the same way: the job calls
:func:`started` when it begins and :func:`finished` when it is done; both
only touch memory in the worker process. When the expected number of jobs is
done, the tally writes one JSON file (``BENCH_OUT``) with the wall-clock time
of the first start and of the last finish, the CPU time the worker process
(all its threads) used in between, and, for latency runs, every
enqueue-to-start delay. The driver waits for that file. Nothing is sent to
Redis or RabbitMQ for counting, so the count costs every library the same
and nothing beyond its own work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Protocol

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
BROKER = os.environ.get("BENCH_BROKER", "redis")  # "redis" or "rabbitmq"
PREFIX = os.environ.get("BENCH_PREFIX", "bench-peers")
QUEUE = PREFIX + "-q"
IO_SECONDS = 0.05
WARMUP = -1.0  # the ``sent_at`` of latency warm-up messages, which are not counted


class Tally:
    """Counts jobs in the worker process and writes the timings once all are done."""

    def __init__(self) -> None:
        self.expect = int(os.environ.get("BENCH_EXPECT", "0"))
        self.out = os.environ.get("BENCH_OUT", "")
        self.count = 0
        self.first = 0.0
        self.first_cpu = 0.0
        self.delays: list[float] = []
        self.lock = threading.Lock()

    def started(self, sent_at: float | None = None) -> bool:
        """Note a job's start; return False for a latency warm-up message."""
        now = time.time()
        if sent_at is not None:
            if sent_at == WARMUP:
                if self.out and not os.path.exists(self.out + ".ready"):
                    with open(self.out + ".ready", "w") as f:
                        f.write("ready")
                return False
            self.delays.append(now - sent_at)
        if not self.first:
            self.first = now
            self.first_cpu = time.process_time()
        return True

    def finished(self) -> None:
        """Note a job's end; the last expected one writes the result file."""
        with self.lock:
            self.count += 1
            if self.count != self.expect or not self.out:
                return
            last = time.time()
            cpu = time.process_time() - self.first_cpu
        result: dict[str, Any] = {
            "first": self.first,
            "last": last,
            "cpu": cpu,
            "count": self.count,
            "delays": self.delays,
        }
        tmp = self.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, self.out)


TALLY = Tally()


class _WarningsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def quiet(logger: str) -> None:
    """Drop a library's per-job INFO lines, even where its CLI forces INFO.

    arq's and streaq's CLIs configure their loggers at INFO and log two lines
    per job; a filter on the logger survives their ``dictConfig``. Every other
    library runs at WARNING through its own CLI option.
    """
    logging.getLogger(logger).addFilter(_WarningsOnly())


def started(sent_at: float | None = None) -> bool:
    """Shortcut for ``TALLY.started``."""
    return TALLY.started(sent_at)


def finished() -> None:
    """Shortcut for ``TALLY.finished``."""
    TALLY.finished()


def report(**figures: Any) -> None:
    """Print the producer's figures as the last line of stdout, for the driver."""
    print(json.dumps(figures), flush=True)


class Client(Protocol):
    """What a peer script provides to the producer commands of :func:`produce`."""

    async def open(self) -> None:
        """Connect (declare queues where the library does that on the producer side)."""

    async def close(self) -> None:
        """Disconnect."""

    async def send(self, kind: str, arg: Any) -> None:
        """Enqueue one job of ``kind`` (``noop``, ``io`` or ``latency``) and wait for the library to return."""

    async def send_bulk(self, kind: str, args: list[int]) -> None:
        """Enqueue one job of ``kind`` per argument through the library's fastest bulk path."""

    async def cleanup(self) -> None:
        """Delete what this run created on the server (RabbitMQ queues); Redis is flushed by the driver."""


async def _latency(client: Client, rate: float, seconds: float) -> int:
    out = os.environ["BENCH_OUT"]
    deadline = time.monotonic() + 120
    while not await asyncio.to_thread(os.path.exists, out + ".ready"):
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not run a warm-up message within 120 s")
        await client.send("latency", WARMUP)
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    total = round(rate * seconds)
    interval = 1.0 / rate
    began = time.monotonic()
    for n in range(total):
        wait = began + n * interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await client.send("latency", time.time())
    return total


async def _produce(client: Client, command: str, args: list[str]) -> dict[str, Any]:
    await client.open()
    try:
        if command == "single":
            count = int(args[0])
            began = time.perf_counter()
            for i in range(count):
                await client.send("noop", i)
            return {"rate": count / (time.perf_counter() - began)}
        if command == "bulk":
            count, kind = int(args[0]), args[1]
            jobs = list(range(count))
            began = time.perf_counter()
            await client.send_bulk(kind, jobs)
            return {"rate": count / (time.perf_counter() - began)}
        if command == "latency":
            return {"sent": await _latency(client, float(args[0]), float(args[1]))}
        if command == "cleanup":
            await client.cleanup()
            return {}
        raise SystemExit(f"unknown command {command!r}")
    finally:
        await client.close()


def produce(client: Client, argv: list[str] | None = None) -> None:
    """Run one producer command and print its figures as JSON.

    Commands: ``single N`` (N no-op jobs one by one), ``bulk N KIND`` (N jobs
    through the bulk path), ``latency RATE SECONDS`` (a steady stream of
    latency jobs after a warm-up), ``cleanup``.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        import uvloop
    except ImportError:
        figures = asyncio.run(_produce(client, argv[0], argv[1:]))
    else:
        figures = uvloop.run(_produce(client, argv[0], argv[1:]))
    report(**figures)
