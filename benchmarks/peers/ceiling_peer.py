"""The body-only ceiling: the peers' job bodies with no library at all.

Worker: ``python ceiling_peer.py noop|io`` runs ``BENCH_EXPECT`` job bodies
(``BENCH_CONCURRENCY`` long-lived coroutines on one event loop, uvloop when
installed, each taking the next job id) that are the same as every peer's:
``started()``, the 50 ms sleep for ``io``, then the shared Redis ``INCR`` and
``finished()`` (:func:`_common.done`). No queue, no messages: what one
process costs and reaches when it only runs the bodies. The tally writes its
result file as the peers' do; the driver then stops the process.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator

from _common import IO_SECONDS, done
from _common import started as job_started


async def _runner(kind: str, jobs: Iterator[int]) -> None:
    for i in jobs:
        job_started()
        if kind == "io":
            await asyncio.sleep(IO_SECONDS)
        await done(i)


async def main(kind: str) -> None:
    jobs = iter(range(int(os.environ["BENCH_EXPECT"])))
    runners = int(os.environ.get("BENCH_CONCURRENCY", "100"))
    await asyncio.gather(*(_runner(kind, jobs) for _ in range(runners)))
    await asyncio.Event().wait()  # the driver stops the process, as it stops workers


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(sys.argv[1]))
    else:
        uvloop.run(main(sys.argv[1]))
