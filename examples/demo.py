"""taskflow end to end on the embedded SQLite broker: no server to install.

Run: python examples/demo.py [--jobs 200]

It starts a real ``taskflow worker`` process, enqueues a batch of jobs from
this producer process, shows progress while they run, prints their results
and stops the worker cleanly with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "taskflow",
        "worker",
        "examples.demo_app:broker",
        "--concurrency",
        "200",
        "--log-level",
        "warning",
    ]
    print("$", " ".join(["taskflow", *command[3:]]))
    return subprocess.Popen(command, cwd=ROOT, env=env)


async def produce(jobs: int) -> None:
    from examples.demo_app import broker, digest, fetch

    async with broker:
        began = time.perf_counter()
        pages = await fetch.send_many([(page,) for page in range(jobs)])
        digests = await digest.send_many([(f"document {i}",) for i in range(jobs // 10)])
        total = len(pages) + len(digests)
        print(f"enqueued {total} jobs in {time.perf_counter() - began:.2f} s")
        while True:
            stats = await broker.stats("default")
            waiting = stats.ready + stats.delayed + stats.in_flight
            done = total - waiting
            bar = "#" * (30 * done // total)
            print(
                f"\r[{bar:<30}] {done}/{total} done, {stats.in_flight} running", end="", flush=True
            )
            if waiting == 0:
                break
            await asyncio.sleep(0.2)
        print(f"\nall {total} jobs finished in {time.perf_counter() - began:.2f} s")
        results = [await m.result(timeout=30) for m in pages]
        words = sum(r["words"] for r in results)
        print(f"fetch: {len(results)} pages, {words} words; first: {results[0]}")
        print(f"digest: {[await m.result(timeout=30) for m in digests[:3]]} ...")
        dead = await broker.stats("default")
        print(f"dead letters: {dead.dead}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env["TASKFLOW_BROKER_URL"] = f"sqlite:///{tmp}/demo.sqlite3"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        worker = start_worker(env)
        try:
            asyncio.run(produce(args.jobs))
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)
        print(f"worker stopped cleanly (exit status {code})")
        return code


if __name__ == "__main__":
    sys.exit(main())
