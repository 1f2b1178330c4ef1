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
import collections
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
BROKER = os.environ.get("BENCH_BROKER", "redis")  # "redis" or "rabbitmq"
PREFIX = os.environ.get("BENCH_PREFIX", "bench-peers")
QUEUE = PREFIX + "-q"
IO_SECONDS = 0.05
WARMUP = -1.0  # the ``sent_at`` of latency warm-up messages, which are not counted
COUNTER = PREFIX + ":done"  # the key every job body INCRs


class Tally:
    """Counts jobs in the worker process and writes the timings once all are done."""

    def __init__(self) -> None:
        self.expect = int(os.environ.get("BENCH_EXPECT", "0"))
        self.out = os.environ.get("BENCH_OUT", "")
        self.count = 0
        self.first = 0.0
        self.first_cpu = 0.0
        self.delays: list[float] = []
        self.seen: set[float] = set()
        self.duplicates = 0
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

    def finished(self, job: float | None = None) -> None:
        """Note a job's end (``job``: its id, for the ledger); the last expected one writes the result file."""
        with self.lock:
            if job is not None:
                if job in self.seen:
                    self.duplicates += 1
                self.seen.add(job)
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
            "distinct": len(self.seen),
            "duplicates": self.duplicates,
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


def finished(job: float | None = None) -> None:
    """Shortcut for ``TALLY.finished``."""
    TALLY.finished(job)


def _incr_command() -> bytes:
    key = COUNTER.encode()
    return b"*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n" % (len(key), key)


def _select_command() -> bytes:
    db = (urlsplit(REDIS_URL).path or "/0").strip("/") or "0"
    return b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%s\r\n" % (len(db), db.encode())


INCR = _incr_command()


class _AsyncCounter:
    """One connection per event loop; INCRs are pipelined on it and their replies read in order."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.opening: asyncio.Future[asyncio.StreamWriter] | None = None
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.reader_task: asyncio.Task[None] | None = None

    async def incr(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is not loop or self.opening is None:
            self.loop = loop
            self.opening = loop.create_task(self._open())
        writer = await self.opening
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        writer.write(INCR)
        await waiter

    async def _open(self) -> asyncio.StreamWriter:
        url = urlsplit(REDIS_URL)
        reader, writer = await asyncio.open_connection(
            url.hostname or "127.0.0.1", url.port or 6379
        )
        writer.write(_select_command())
        if not (await reader.readline()).startswith(b"+OK"):
            raise RuntimeError("SELECT failed")
        self.reader_task = asyncio.get_running_loop().create_task(self._replies(reader))
        return writer

    async def _replies(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            waiter = self.waiters.popleft()
            if line.startswith(b":"):
                waiter.set_result(None)
            else:
                waiter.set_exception(RuntimeError(f"INCR failed: {line!r}"))


class _SyncCounter:
    """A pool of blocking connections, one per thread (or greenlet) INCRing at the same moment."""

    def __init__(self) -> None:
        self.idle: list[socket.socket] = []
        self.lock = threading.Lock()

    def incr(self) -> None:
        with self.lock:
            conn = self.idle.pop() if self.idle else None
        if conn is None:
            conn = self._open()
        conn.sendall(INCR)
        if not _read_line(conn).startswith(b":"):
            raise RuntimeError("INCR failed")
        with self.lock:
            self.idle.append(conn)

    def _open(self) -> socket.socket:
        url = urlsplit(REDIS_URL)
        conn = socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(_select_command())
        if not _read_line(conn).startswith(b"+OK"):
            raise RuntimeError("SELECT failed")
        return conn


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = conn.recv(64)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        data += chunk
    return data


_ASYNC = _AsyncCounter()
_SYNC = _SyncCounter()


async def done(job: float | None = None) -> None:
    """End an async job: the shared Redis INCR, then :func:`finished`."""
    await _ASYNC.incr()
    TALLY.finished(job)


def done_sync(job: float | None = None) -> None:
    """End a sync job: the shared Redis INCR (blocking), then :func:`finished`."""
    _SYNC.incr()
    TALLY.finished(job)


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
            first = int(args[2]) if len(args) > 2 else 0
            jobs = list(range(first, first + count))
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

    Commands: ``single N`` (N no-op jobs one by one), ``bulk N KIND [FIRST]`` (N jobs
    through the bulk path, ids from FIRST), ``latency RATE SECONDS`` (a steady stream of
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
