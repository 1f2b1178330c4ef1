"""A plain script with no event loop of its own: sends, reads results, forks, exits.

Run against a ``taskflow worker tests.apps.sync_app:broker``; prints one
line per check and ``closed at exit`` when the interpreter closes the broker.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import threading
import time

import taskflow
from tests.apps.sync_app import add, broker, build_broker, fail


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
    say(f"fork beside a running loop: {fork_beside_a_running_loop()}")


def fork_beside_a_running_loop() -> str:
    """A broker connected on a loop the parent runs in a thread: the child must not touch it."""
    other = build_broker()

    @other.actor(name="add", store_results=True)
    def other_add(x: int, y: int) -> int:
        return x + y

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(other.connect(), loop).result(10)
    pid = os.fork()
    if pid == 0:  # the loop's thread is not here: send_sync must connect afresh
        os._exit(0 if other_add.send_sync(4, 4).result_sync(timeout=20) == 8 else 1)
    _, status = os.waitpid(pid, 0)
    # The parent's connections still work on its own loop after the child is gone, at once
    # (had the child closed them, the parent's selector would have lost their sockets).
    started = time.monotonic()
    sent = asyncio.run_coroutine_threadsafe(other_add.send(5, 5), loop).result(10)
    value = asyncio.run_coroutine_threadsafe(sent.result(timeout=20), loop).result(30)
    print(f"parent's send after the fork took {time.monotonic() - started:.3f} s", file=sys.stderr)
    asyncio.run_coroutine_threadsafe(other.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    return f"child exited {os.waitstatus_to_exitcode(status)}, parent got {value}"


if __name__ == "__main__":
    main()
