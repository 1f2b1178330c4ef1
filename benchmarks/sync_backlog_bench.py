"""How a sync backlog is shared: N half-second sync jobs, ``--processes 2 --threads 2``.

Run: python benchmarks/sync_backlog_bench.py [--jobs 32] [--seconds 0.5]

Sends the jobs to a SQLite file, starts ``taskflow worker`` on them (the app
of the tests, ``tests/apps/sync_actors_app.py``), and reports the time from
the first job's start to the last one's end and how many each process ran.
Four threads in all: the ideal is ``jobs * seconds / 4``. A worker that
leased more sync work than it has threads would run most of the backlog in
one process, taking up to twice as long.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent


async def _send(jobs: int, seconds: float) -> None:
    from tests.apps import sync_actors_app

    broker = sync_actors_app.broker()
    chore = broker.get_actor("chore")
    assert chore is not None
    async with broker:
        await chore.send_many([(seconds,)] * jobs)


def _pids(markers: Path, kind: str) -> list[str]:
    return [p.name.split("-")[1] for p in markers.glob(f"{kind}-*")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        markers = Path(tmp)
        os.environ["TASKFLOW_CLI_SQLITE"] = str(markers / "queue.sqlite3")
        os.environ["TASKFLOW_CLI_MARKERS"] = str(markers)
        anyio.run(_send, args.jobs, args.seconds)
        worker = subprocess.Popen(
            [sys.executable, "-m", "taskflow", "worker", "tests.apps.sync_actors_app:broker"]
            + ["--processes", "2", "--threads", "2", "--queues", "sync"],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not _pids(markers, "job"):
                time.sleep(0.01)
            began = time.monotonic()
            while len(_pids(markers, "done")) < args.jobs:
                time.sleep(0.01)
            took = time.monotonic() - began
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        shares = sorted(Counter(_pids(markers, "done")).values(), reverse=True)
    ideal = args.jobs * args.seconds / 4
    print(
        f"{args.jobs} jobs of {args.seconds} s: {took:.1f} s "
        f"(ideal {ideal:.1f} s), per process {shares}"
    )


if __name__ == "__main__":
    main()
