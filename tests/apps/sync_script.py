"""A plain script with no event loop of its own: sends, reads results, forks, exits.

Run against a ``taskflow worker tests.apps.sync_app:broker``; prints one
line per check and ``closed at exit`` when the interpreter closes the broker.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

import taskflow
from tests.apps.sync_app import add, broker, fail


def say(line: str) -> None:
    print(line, flush=True)


def send_and_read(x: int) -> int:
    return add.send_sync(x, x).result_sync(timeout=20)


def in_child(x: int) -> None:
    sys.exit(0 if send_and_read(x) == 2 * x else 1)


def main() -> None:
    real_close = broker._close

    async def close_and_say() -> None:
        await real_close()
        say(f"closed at exit in {os.getpid()}")

    vars(broker)["_close"] = close_and_say

    say(f"result {add.send_sync(2, 3).result_sync(timeout=20)}")
    many = add.send_many_sync([(i, i) for i in range(20)])
    say(f"many {sum(m.result_sync(timeout=20) for m in many)}")
    try:
        fail.send_sync("boom").result_sync(timeout=20)
    except taskflow.ResultFailed as exc:
        say(f"failed {exc.type_name}")
    started = time.monotonic()
    later = add.send_with_options_sync(args=(1, 1), delay=0.5)
    value = later.result_sync(timeout=20)
    say(f"delayed {value} after {time.monotonic() - started >= 0.5}")

    pid = os.fork()  # the parent's loop thread and connections are in use
    if pid == 0:
        os._exit(0 if send_and_read(10) == 20 else 1)
    _, status = os.waitpid(pid, 0)
    say(f"forked child exited {os.waitstatus_to_exitcode(status)}")
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=in_child, args=(n,)) for n in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    say(f"multiprocessing children exited {[c.exitcode for c in children]}")
    say(f"parent after fork {send_and_read(21)}")


if __name__ == "__main__":
    main()
