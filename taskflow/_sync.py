"""Sync producers: the ``*_sync`` methods hand their coroutine to an event loop and wait.

Each broker gets one :class:`Portal`, made on first use. A portal chooses the
event loop a call runs on:

* the loop the broker is connected on, when that loop is running in another
  thread of this process (a worker's loop, for its sync actors; a web app's
  loop, for the sync handlers it runs in threads);
* otherwise its own background loop: one daemon thread per broker per
  process, started lazily, running the broker's I/O for every thread that
  sends. Connections made on a loop that stopped are forgotten and made
  afresh there.

After ``os.fork`` the child forgets the parent's loop and connections without
touching them (an event loop's selector is shared with the parent across a
fork, so even closing them would disturb the parent) and starts its own on
first use. At interpreter exit every portal closes its broker and stops its
thread. Called from a thread whose event loop is running, the ``*_sync``
methods raise ``RuntimeError`` naming the ``await`` form to use instead.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from taskflow.broker import Broker

T = TypeVar("T")

logger = logging.getLogger("taskflow.sync")

CLOSE_TIMEOUT = 10.0
"""Seconds ``close_sync`` and interpreter exit give the broker to close."""

_POLL = 0.5  # seconds between checks that the loop a call waits on still runs

_portals: weakref.WeakSet[Portal] = weakref.WeakSet()
_portals_lock = threading.Lock()
# What a forked child inherited from its parent: kept alive so that no
# finalizer ever runs on it here (closing a socket or an event loop of the
# parent's from the child could unregister the parent's file descriptors).
_inherited: list[object] = []


def refuse_in_running_loop(sync_form: str, await_form: str) -> None:
    """Raise ``RuntimeError`` when the calling thread runs an event loop.

    Blocking that thread on its own loop would deadlock it, so the caller is
    told to ``await`` the async twin instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{sync_form} was called from a running event loop, which it would block; "
        f"use `{await_form}` instead"
    )


def portal(broker: Broker) -> Portal:
    """The broker's portal, made on first use."""
    found: Portal | None = broker.__dict__.get("_sync_portal")
    if found is not None:
        return found
    with _portals_lock:
        found = broker.__dict__.get("_sync_portal")
        if found is None:
            found = broker.__dict__["_sync_portal"] = Portal(broker)
            _portals.add(found)
        return found


def run(
    broker: Broker,
    call: Callable[[], Coroutine[Any, Any, T]],
    *,
    sync_form: str,
    await_form: str,
) -> T:
    """Run the coroutine ``call()`` makes on the broker's loop and return its result.

    Raises:
        RuntimeError: The calling thread runs an event loop, or the loop the
            call was handed to stopped before it finished.
    """
    refuse_in_running_loop(sync_form, await_form)
    return portal(broker).call(call)


class Portal:
    """Runs a broker's coroutines for threads that have no event loop of their own."""

    def __init__(self, broker: Broker) -> None:
        self._broker_ref = weakref.ref(broker)
        self._lock = threading.Lock()
        self._thread: LoopThread | None = None
        self._pid = os.getpid()

    @property
    def broker(self) -> Broker:
        """The broker this portal runs coroutines for."""
        broker = self._broker_ref()
        if broker is None:  # pragma: no cover - callers hold the broker
            raise RuntimeError("the broker is gone")
        return broker

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The background loop, while its thread runs."""
        return None if self._thread is None else self._thread.loop

    def call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``make()`` on the broker's loop, waiting for it in this thread."""
        loop = self._target_loop()
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        try:
            while True:
                try:
                    return future.result(_POLL)
                except TimeoutError:
                    if future.done():
                        raise  # the coroutine's own
                    if not loop.is_running():
                        raise RuntimeError(
                            "the event loop running this call stopped before it ended"
                        ) from None
        except BaseException:
            future.cancel()  # KeyboardInterrupt in the waiting thread: stop the coroutine too
            raise

    def _target_loop(self) -> asyncio.AbstractEventLoop:
        broker = self.broker
        with self._lock:
            if self._pid != os.getpid():  # forked without the at-fork hook (os.fork in C code)
                self._reset_in_child()
            home = connected_loop(broker)
            if home is not None and (home is self.loop or home.is_running()):
                return home
            loop = self._start()
            if broker._connected and broker._loop_pid != os.getpid():
                forget_connections(broker)  # the parent process's: never touch them here
            elif broker._connected:  # on a loop that stopped: its connections are unusable
                self._drop_stale(broker, loop)
            return loop

    def _drop_stale(self, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        """Close what can be closed of connections made on a stopped loop, then forget them."""
        asyncio.run_coroutine_threadsafe(broker._drop_stale_connections(), loop).result()

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._thread is None:
            self._thread = LoopThread(f"taskflow-sync-{type(self.broker).__name__}")
        return self._thread.loop

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the broker where it is connected and stop the background thread."""
        broker = self.broker
        with self._lock:
            home = connected_loop(broker)
            thread, self._thread = self._thread, None
        if home is not None and (thread is not None and home is thread.loop or home.is_running()):
            future = asyncio.run_coroutine_threadsafe(broker.close(), home)
            try:
                future.result(timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                logger.warning(
                    "closing %s took over %.0f s; gave up", type(broker).__name__, timeout
                )
        if thread is not None:
            thread.stop(timeout)

    def _reset_in_child(self) -> None:
        """In a forked child: forget the parent's loop, thread and connections."""
        _inherited.append(self._thread)
        self._thread = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        broker = self._broker_ref()
        if broker is not None and broker._connected:
            forget_connections(broker)


def connected_loop(broker: Broker) -> asyncio.AbstractEventLoop | None:
    """The loop the broker's connections belong to, if it is connected in this process."""
    return broker._connected_loop()


def forget_connections(broker: Broker) -> None:
    """Drop the broker's connections without closing them, keeping them alive forever."""
    _inherited.append(dict(broker.__dict__))
    if broker.results is not None:
        _inherited.append(dict(broker.results.__dict__))
    broker._forget_connections()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory of the background threads: uvloop's when installed, as for workers."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class LoopThread:
    """An event loop in a daemon thread of its own, running until :meth:`stop`.

    The loop (uvloop's when installed) runs one long-lived main task, as
    under ``asyncio.run``, so anyio's worker threads, used by the SQLite
    broker, are reused between calls instead of started for each.
    """

    def __init__(self, name: str) -> None:
        ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self.thread.start()
        ready.wait()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop."""
        assert self._loop is not None
        return self._loop

    def _run(self, ready: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            ready.set()
            await self._stopping.wait()

        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(main())
        finally:
            ready.set()

    def stop(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the loop (its leftover tasks are cancelled) and wait for the thread."""
        stopping = self._stopping
        if stopping is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(stopping.set)
        self.thread.join(timeout)


def close_all(timeout: float = CLOSE_TIMEOUT) -> None:
    """Close every portal's broker and stop its thread (run at interpreter exit)."""
    with _portals_lock:
        portals = list(_portals)
    for p in portals:
        if p._pid != os.getpid():
            continue
        try:
            p.close(timeout)
        except Exception:
            logger.exception("closing a broker at exit failed")


def _before_fork() -> None:
    _portals_lock.acquire()
    for p in _portals:
        p._lock.acquire()


def _after_fork_in_parent() -> None:
    for p in _portals:
        p._lock.release()
    _portals_lock.release()


def _after_fork_in_child() -> None:
    global _portals_lock
    _portals_lock = threading.Lock()
    for p in _portals:
        p._reset_in_child()


atexit.register(close_all)
os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
