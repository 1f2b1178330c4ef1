"""What a big group costs to send: bytes on the broker, time and peak memory of ``run()``.

Run: python benchmarks/group_bench.py [--members 1000,10000,100000] [--broker sqlite|redis]
                                       [--redis-url redis://127.0.0.1:6379/15]

Each size runs in a fresh child process, which builds a group of no-op
members with a completion callback (a counted group, the expensive kind),
sends it with ``group.run()`` and reports the time ``run()`` took, the bytes
enqueued (the sum of the encoded members), the largest member and the
process's peak RSS (``VmHWM``) before and after. A member carries its group's
id and its position, so the bytes grow linearly with the group and the
largest member stays the same size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Any

import anyio

from taskflow import Broker, broker_from_url, group
from taskflow.broker import Envelope


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Counting:
    """Wraps a broker's ``_enqueue`` to count the bytes and the largest body sent."""

    def __init__(self, broker: Broker) -> None:
        self.bytes = 0
        self.largest = 0
        original = broker._enqueue

        async def counted(queue: str, envelopes: Sequence[Envelope]) -> None:
            for envelope in envelopes:
                self.bytes += len(envelope.body)
                self.largest = max(self.largest, len(envelope.body))
            await original(queue, envelopes)

        broker._enqueue = counted  # type: ignore[method-assign]


async def one(url: str, members: int) -> dict[str, Any]:
    broker = broker_from_url(url, results=True)

    @broker.actor
    async def noop(i: int) -> None:
        pass

    @broker.actor
    async def done() -> None:
        pass

    counting = Counting(broker)
    async with broker:
        before = peak_rss_mib()
        g = group([noop.message(i) for i in range(members)])
        g.add_completion_callback(done.message())
        began = time.perf_counter()
        await g.run()
        took = time.perf_counter() - began
        stats = await broker.stats("default")
    return {
        "members": members,
        "run_s": round(took, 2),
        "enqueued_mib": round(counting.bytes / 2**20, 1),
        "bytes_per_member": round(counting.bytes / members),
        "largest_member_bytes": counting.largest,
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(peak_rss_mib(), 1),
        "ready": stats.ready,
    }


def child(argv: list[str]) -> None:
    url, members = argv[0], int(argv[1])
    print(json.dumps(anyio.run(one, url, members)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1000,10000,100000")
    parser.add_argument("--broker", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    for members in (int(m) for m in args.members.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            if args.broker == "sqlite":
                url = f"sqlite:///{tmp}/bench.sqlite3"
            else:
                sep = "&" if "?" in args.redis_url else "?"
                url = f"{args.redis_url}{sep}namespace=groupbench-{uuid.uuid4().hex[:8]}"
            done = subprocess.run(
                [sys.executable, __file__, "--child", url, str(members)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": os.getcwd()},
            )
            print(done.stdout.strip(), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
