"""What metrics and tracing cost: no-op throughput on Redis, off / metrics / tracing side by side.

Run: python benchmarks/observability_bench.py [--url redis://127.0.0.1:6379/15]
                                               [--messages 20000] [--rounds 5] [--uvloop]

``--url memory://`` runs the same on the MemoryBroker: no server, so the
difference between modes is the CPU the middleware itself costs.

Each run drains ``--messages`` no-op messages, enqueued beforehand, with one
``Worker`` at concurrency 100 in a fresh child process, timed from worker
start to the last message done (as ``redis_bench.py``'s ``noop``). Modes:

* ``off``: the default stack;
* ``metrics``: :class:`taskflow.middleware.Prometheus` first, in
  ``prometheus_client``'s multiprocess mode (values in mmap files), as under
  ``taskflow worker --metrics-port``;
* ``tracing``: :class:`taskflow.middleware.OpenTelemetry` first, with the
  OpenTelemetry SDK, every span sampled, a ``BatchSpanProcessor`` and an
  exporter that drops the spans;
* ``sampled``: the same, with one trace in ten sampled
  (``ParentBased(TraceIdRatioBased(0.1))``, a usual production setting);
* ``both``: metrics and tracing (every span).

The modes take turns, round after round, so a change in the machine's load
touches all of them alike; the table shows each mode's median rate and CPU
time per message, and its cost against ``off``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from taskflow import Broker, Middleware, Worker
from taskflow.brokers.memory import MemoryBroker
from taskflow.brokers.redis import RedisBroker
from taskflow.middleware import default_middleware

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from redis_bench import cleanup  # a script beside this one

MODES = ("off", "metrics", "tracing", "sampled", "both")


_providers: list[Any] = []


def flush() -> None:
    for provider in _providers:
        provider.force_flush()


def tracing(ratio: float = 1.0) -> Middleware:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from taskflow.middleware import OpenTelemetry

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    _providers.append(provider)
    return OpenTelemetry(tracer_provider=provider)


def metrics() -> Middleware:
    from taskflow.middleware import Prometheus

    return Prometheus()


def stack(mode: str) -> list[Middleware]:
    first: dict[str, list[Callable[[], Middleware]]] = {
        "off": [],
        "metrics": [metrics],
        "tracing": [tracing],
        "sampled": [lambda: tracing(0.1)],
        "both": [metrics, tracing],
    }
    return [make() for make in first[mode]] + default_middleware()


async def run(mode: str, url: str, messages: int) -> dict[str, Any]:
    broker: Broker
    if url == "memory://":
        broker = MemoryBroker(middleware=stack(mode))
    else:
        broker = RedisBroker(
            url, namespace=f"bench-obs-{uuid.uuid4().hex[:8]}", middleware=stack(mode)
        )
    done = anyio.Event()
    count = 0

    @broker.actor(queue="bench", max_retries=0)
    async def noop(i: int) -> None:
        nonlocal count
        count += 1
        if count == messages:
            done.set()

    async with broker:
        try:
            for start in range(0, messages, 1000):
                await noop.send_many([(i,) for i in range(start, min(start + 1000, messages))])
            flush()  # the send spans are exported before the clock starts
            began, cpu = time.perf_counter(), time.process_time()
            async with Worker(broker, ["bench"], concurrency=100):
                with anyio.fail_after(600):
                    await done.wait()
                elapsed = time.perf_counter() - began
                cpu_us = (time.process_time() - cpu) / messages * 1e6
            return {"rate": messages / elapsed, "cpu_us": cpu_us}
        finally:
            await broker.purge("bench")
            if isinstance(broker, RedisBroker):
                await cleanup(broker)


def run_child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, f"--mode={mode}", f"--url={args.url}"]
    command.append(f"--messages={args.messages}")
    if args.uvloop:
        command.append("--uvloop")
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as directory:
        env = dict(os.environ)
        if mode in ("metrics", "both"):
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as workers do")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        options = {"use_uvloop": True} if args.uvloop else {}
        result = anyio.run(run, args.mode, args.url, args.messages, backend_options=options)
        print(json.dumps(result))
        return
    modes = args.modes.split(",")
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        for mode in modes:
            results[mode].append(run_child(mode, args))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    base_rate = statistics.median(r["rate"] for r in results[modes[0]])
    base_cpu = statistics.median(r["cpu_us"] for r in results[modes[0]])
    print(
        f"{'mode':<8} {'msg/s (median)':>15} {'cost':>7} {'CPU µs/msg':>11} {'CPU cost':>9}"
        f"   rates of the {args.rounds} rounds"
    )
    for mode in modes:
        rate = statistics.median(r["rate"] for r in results[mode])
        cpu = statistics.median(r["cpu_us"] for r in results[mode])
        rounds = " ".join(f"{r['rate']:,.0f}" for r in results[mode])
        print(
            f"{mode:<8} {rate:>15,.0f} {1 - rate / base_rate:>7.1%} {cpu:>11.1f}"
            f" {cpu / base_cpu - 1:>9.1%}   {rounds}"
        )


if __name__ == "__main__":
    main()
