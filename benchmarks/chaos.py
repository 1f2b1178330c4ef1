"""A chaos soak: a worker tree under random faults for N minutes, then the ledger.

Run (from the repository root):

    python benchmarks/chaos.py --broker redis|sqlite|rabbitmq --minutes 10 [--rate 100]
        [--fault-every 4] [--processes 2] [--concurrency 8] [--seed 1]

The same run as the suite's chaos test (``tests/apps/chaos.py``), only
longer: ``taskflow worker --processes N`` on the broker's own private server
(Redis: a ``redis-server`` on a free 63xx port, AOF with fsync always), plain,
delayed and retried messages at ``--rate`` per second, and every
``--fault-every`` seconds or so a fault: a worker child SIGKILLed, or a
server fault of the broker (Redis: SIGKILL and restart; SQLite: another
connection holding the write lock for 2 s; RabbitMQ, on the server at
``TASKFLOW_AMQP_URL`` under a prefix of its own: every connection of the
run closed by the server). Then it drains,
SIGTERMs the supervisor and prints the ledger: sent, refused, faults,
completions, duplicates against their bound, lost, early, left behind.
Exit status 1 if a promise was broken.

Brokers: those in ``tests.apps.chaos.TARGETS`` (add yours there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package

from tests.apps.chaos import TARGETS, load_target, print_ledger, run_chaos


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="taskflow-chaos-") as tmp:
        target = load_target(args.broker, Path(tmp) / "target")
        try:
            ledger = await run_chaos(
                target,
                Path(tmp) / "run",
                seconds=args.minutes * 60,
                rate=args.rate,
                fault_every=args.fault_every,
                processes=args.processes,
                concurrency=args.concurrency,
                seed=args.seed,
            )
        finally:
            target.close()
    print(f"broker:       {args.broker}")
    print_ledger(ledger)
    return 1 if ledger.problems() else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=sorted(TARGETS), default="redis")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to send (default 5)")
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second")
    parser.add_argument("--fault-every", type=float, default=4.0, help="seconds between faults")
    parser.add_argument("--processes", type=int, default=2, help="worker children")
    parser.add_argument("--concurrency", type=int, default=8, help="per child")
    parser.add_argument("--seed", type=int, default=None, help="for a repeatable run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        sys.exit(anyio.run(main, parse()))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
