"""Stop signals, handled for the whole life of a process, with echoes told apart.

GNU ``timeout``, Kubernetes and systemd (``KillMode=mixed``) signal a
process and then its whole process group, so the supervisor of ``taskflow
worker`` receives the same SIGTERM twice a millisecond apart, and each child
receives it once from the sender and once more forwarded by its parent. A
signal that repeats within :data:`ECHO_WINDOW` seconds of the first one is
therefore taken as that same signal (an *echo*); only a later one is a
second signal.

The handlers are installed with :func:`signal.signal` once and never
removed: an event loop's own signal handlers go back to the default (death)
when they are removed, so a copy arriving while a process winds down would
kill it. While a loop is attached, each signal is passed to it with
``call_soon_threadsafe`` (safe in a signal handler); otherwise it is kept
until one attaches, or, once detached, ignored.
"""

from __future__ import annotations

import asyncio
import enum
import signal
import time
from collections.abc import Callable, Iterable
from types import FrameType

#: Seconds after a first stop signal during which a repeat is the same signal.
ECHO_WINDOW = 1.0


class Arrival(enum.Enum):
    """How a stop signal relates to the ones before it."""

    FIRST = "first"
    ECHO = "echo"
    REPEAT = "repeat"


Handler = Callable[[signal.Signals, Arrival], None]


class StopSignals:
    """Receives ``signums`` and hands each, classified, to the attached event loop.

    Args:
        signums: The signals to handle (for example SIGTERM and SIGINT).
        window: Seconds after the first signal during which a repeat is an echo.
    """

    def __init__(self, signums: Iterable[signal.Signals], *, window: float = ECHO_WINDOW) -> None:
        self.window = window
        self.first_at: float | None = None
        self._pending: list[tuple[signal.Signals, Arrival]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler: Handler | None = None
        self._detached = False
        for signum in signums:
            signal.signal(signum, self._receive)

    def attach(self, handler: Handler) -> None:
        """Pass signals to ``handler`` in the running loop, those received so far first."""
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        pending, self._pending = self._pending, []
        for signum, arrival in pending:
            handler(signum, arrival)

    def detach(self) -> None:
        """Ignore signals from now on (the process is winding down)."""
        self._loop = None
        self._handler = None
        self._detached = True

    def _classify(self) -> Arrival:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
            return Arrival.FIRST
        return Arrival.ECHO if now - self.first_at < self.window else Arrival.REPEAT

    def _receive(self, signum: int, frame: FrameType | None) -> None:
        arrival = self._classify()
        received = signal.Signals(signum)
        if self._loop is not None and self._handler is not None:
            try:
                self._loop.call_soon_threadsafe(self._handler, received, arrival)
            except RuntimeError:  # the loop closed without detaching: nothing left to stop
                pass
        elif not self._detached:
            self._pending.append((received, arrival))
