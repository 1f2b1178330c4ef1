"""The threads of sync actors: slots, time limits from the thread's start, stuck calls.

``ctx.state[THREAD_LIMITS]`` carries ``(time_limit, stuck_grace)`` from the
time-limit middleware to the worker, which enforces them here.

A worker runs sync actors in at most ``threads`` threads. :class:`ThreadPool`
hands out that many *slots*; a message of a sync actor takes one before it
runs (a consumer of a queue with only sync actors takes it before it even
fetches the next message, so that a worker leases no more sync work than it
has threads for), and waiting for a slot counts as not started: a graceful
stop hands such a message back at once.

Time limit: the clock of a sync call starts when its thread starts running
it, not when the message arrived, so neither a wait for a thread is charged
to the call nor is a call that waited longer than its limit left without one.
At the limit, :class:`~taskflow.TimeLimitExceeded` is raised inside the
thread (``<actor> ran over its time limit of <limit> s``); it takes effect at
the thread's next Python instruction.

A call blocked in C code never reaches that instruction. If it is still
running ``stuck_grace`` seconds after its limit, the pool gives up on it: the
message fails with ``TimeLimitExceeded`` (retried or dead-lettered like any
failure), its slot is freed, the thread is abandoned (counted in
:attr:`ThreadPool.stuck`) and ``on_stuck`` is called, so that the process
can be recycled (``taskflow worker`` stops the child gracefully and its
supervisor starts a new one).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from taskflow.errors import TimeLimitExceeded

logger = logging.getLogger("taskflow.worker")

#: Seconds past its time limit after which a sync call that did not stop is given up.
STUCK_GRACE = 10.0

#: Key of ``ctx.state`` under which the time-limit layer leaves a sync call's limits.
THREAD_LIMITS = "taskflow.thread_limits"


class ThreadCall:
    """One sync actor call in a pool thread, which can be interrupted from the loop."""

    __slots__ = ("_ident", "_lock", "args", "fn", "interrupted", "kwargs", "on_start", "running")

    def __init__(self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.running = False
        self.interrupted: type[BaseException] | None = None
        #: Called in the thread as the call starts.
        self.on_start: Callable[[], None] | None = None
        self._ident: int | None = None
        self._lock = threading.Lock()

    def run(self) -> Any:
        """Run the call (in the pool thread)."""
        with self._lock:
            self._ident = threading.get_ident()
            self.running = True
        if self.on_start is not None:
            self.on_start()
        try:
            return self.fn(*self.args, **self.kwargs)
        finally:
            with self._lock:
                self._ident = None
                self.running = False
                if self.interrupted is not None:
                    # An interrupt sent as the call returned must not fire later,
                    # in the thread pool's own code: clear whatever is pending.
                    _set_async_exc(threading.get_ident(), None)

    def interrupt(self, exc_type: type[BaseException]) -> None:
        """Raise ``exc_type`` in the thread, if the call still runs there."""
        with self._lock:
            if self._ident is not None:
                self.interrupted = exc_type
                _set_async_exc(self._ident, exc_type)


def _set_async_exc(ident: int, exc_type: type[BaseException] | None) -> None:
    """Make thread ``ident`` raise ``exc_type`` soon; ``None`` clears what is pending."""
    exc = None if exc_type is None else ctypes.py_object(exc_type)  # None: a NULL pointer
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), exc)


class _LimitTimers:
    """The time-limit timers of one call: interrupt at the limit, abandon after the grace.

    The limit is counted from when the thread starts the call (``on_start``),
    not from when it was queued for a thread.
    """

    __slots__ = ("abandon", "call", "finished", "grace", "limit", "loop", "timers")

    def __init__(self, call: ThreadCall, limit: float | None, grace: float | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.call = call
        self.limit = limit
        self.grace = grace
        self.timers: list[asyncio.TimerHandle] = []
        self.finished = False
        self.abandon = anyio.CancelScope()
        if limit is not None:
            call.on_start = self._started

    def _started(self) -> None:  # in the thread
        self.loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:  # on the loop, as the thread starts the call
        if not self.finished and self.limit is not None:
            self.timers.append(self.loop.call_later(self.limit, self._expire))

    def _expire(self) -> None:
        self.call.interrupt(TimeLimitExceeded)
        if self.grace is not None:
            self.timers.append(self.loop.call_later(self.grace, self._give_up))

    def _give_up(self) -> None:
        if self.call.running:
            self.abandon.cancel()

    def stop(self) -> None:
        """Cancel the timers; a start reported later arms nothing."""
        self.finished = True
        for timer in self.timers:
            timer.cancel()


class ThreadPool:
    """At most ``threads`` sync calls at once, each under its time limit.

    Args:
        threads: Slots (threads running sync calls at once).
        on_stuck: Called with a description when a call is given up as stuck.
    """

    def __init__(self, threads: int, on_stuck: Callable[[str], None] | None = None) -> None:
        self.threads = threads
        self.on_stuck = on_stuck
        self.stuck = 0
        self._free = threads
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._runner = anyio.CapacityLimiter(threads)
        self._running: set[ThreadCall] = set()

    @property
    def free(self) -> int:
        """Slots not taken."""
        return self._free

    async def take(self) -> None:
        """Wait for a slot and take it (first come, first served); cancellable."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot as it was cancelled: pass it on
            raise
        finally:
            if not waiter.done():
                waiter.cancel()

    def give(self) -> None:
        """Give a slot back: to the first waiter, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def interrupt_all(self, exc_type: type[BaseException]) -> None:
        """Raise ``exc_type`` in every running call's thread."""
        for call in list(self._running):
            call.interrupt(exc_type)

    async def run(
        self,
        call: ThreadCall,
        name: str,
        limit: float | None = None,
        stuck_grace: float | None = STUCK_GRACE,
    ) -> Any:
        """Run ``call`` in a thread (its slot already taken), under ``limit`` seconds.

        Raises:
            TimeLimitExceeded: The call ran over ``limit``, or was given up as stuck.
        """
        timers = _LimitTimers(call, limit, stuck_grace)
        text = f"{name} ran over its time limit of {limit} s"
        self._running.add(call)
        try:
            with timers.abandon:
                try:
                    return await anyio.to_thread.run_sync(
                        call.run, limiter=self._runner, abandon_on_cancel=True
                    )
                except TimeLimitExceeded as exc:
                    if call.interrupted is TimeLimitExceeded:
                        raise TimeLimitExceeded(text) from exc
                    raise
        finally:
            timers.stop()
            self._running.discard(call)
        self._give_up(name, limit, stuck_grace)
        raise TimeLimitExceeded(f"{text} and was still running {stuck_grace} s later")

    def _give_up(self, name: str, limit: float | None, grace: float | None) -> None:
        self.stuck += 1
        what = (
            f"sync actor {name} is stuck: still running {grace} s after its time limit of "
            f"{limit} s (blocked in C code?); its thread is abandoned"
        )
        logger.error("%s", what)
        if self.on_stuck is not None:
            self.on_stuck(what)
