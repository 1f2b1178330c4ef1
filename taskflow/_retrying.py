"""One retry policy for every broker and result backend: backoff, outage logging, retrying.

A transport that loses its server does three things, always the same way:

* waits between attempts with :func:`backoff` (exponential, capped, with
  jitter, so that a hundred workers coming back do not knock in step);
* says so once per outage, and once when it ends, through an :class:`Outage`
  (lost connection or full server: ``kind``)
  (a log line per failed attempt would drown the log at the moment it is read);
* bounds the whole repetition by a deadline: :func:`retrying` repeats a call
  while it fails for a reason that may pass, and gives up with :class:`GaveUp`
  once its time is spent, so that no caller hangs for good.

What counts as "may pass" is the transport's to say (a ``transient``
predicate): a refused connection or a server still loading, yes; a wrong
password or a malformed command, never.

Loops that are not one call (a heartbeat thread, a consumer) use
:class:`Outage` alone: ``delay = outage.failed(exc)`` on each failure,
``outage.recovered()`` on the next success.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: First and longest wait between two attempts, in seconds.
BASE = 0.05
CAP = 2.0


def backoff(attempt: int, *, base: float = BASE, cap: float = CAP) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): exponential, capped, jittered.

    The wait doubles from ``base`` up to ``cap``; each is drawn from the upper
    half of its range ("equal jitter"), so it never collapses to nothing and
    retries of many clients spread out.
    """
    ceiling = min(cap, base * 2.0 ** min(attempt, 32))
    return random.uniform(0.5, 1.0) * ceiling


class Outage:
    """Logs an outage once when it starts and once when it ends; paces the retries.

    Args:
        logger: Where to log.
        what: Who lost the server, for the log line (``"consumer of emails"``).
        where: The server, masked (no password), for the log line.
        server: The kind of server (``"Redis"``, ``"RabbitMQ"``, ``"SQLite"``).
        base: First wait between attempts, in seconds.
        cap: Longest wait between attempts, in seconds.

    Attributes:
        since: ``time.monotonic()`` when the current outage began, or ``None``.
        attempts: Failed attempts in the current outage.
        count: Outages seen since this object was made.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        where: str,
        *,
        server: str = "the server",
        base: float = BASE,
        cap: float = CAP,
    ) -> None:
        self.logger = logger
        self.what = what
        self.where = where
        self.server = server
        self.base = base
        self.cap = cap
        self.since: float | None = None
        self.attempts = 0
        self.count = 0
        self.kind = "connection"

    @property
    def active(self) -> bool:
        """Whether an outage is going on (a failure not yet followed by a success)."""
        return self.since is not None

    def failed(self, exc: BaseException, *, kind: str = "connection") -> float:
        """Record a failed attempt; return the seconds to wait before the next one.

        Only the first failure of an outage is logged (a warning). ``kind``
        words it: ``"connection"`` (lost the connection) or ``"full"`` (the
        server refuses writes for want of memory or disk).
        """
        if self.since is None:
            self.since = time.monotonic()
            self.count += 1
            self.kind = kind
            self.logger.warning(
                "%s; retrying with backoff (%s: %s)",
                _WORDS[kind][0].format(what=self.what, server=self.server, where=self.where),
                type(exc).__name__,
                exc,
            )
        delay = backoff(self.attempts, base=self.base, cap=self.cap)
        self.attempts += 1
        return delay

    def recovered(self) -> None:
        """Record a success; log the end of the outage if there was one."""
        if self.since is not None:
            self.logger.warning(
                "%s after %.1f s (%d failed attempts)",
                _WORDS[self.kind][1].format(what=self.what, server=self.server, where=self.where),
                time.monotonic() - self.since,
                self.attempts,
            )
            self.since = None
            self.attempts = 0


#: How an outage of each kind is told: when it starts, when it ends.
_WORDS = {
    "connection": (
        "{what} lost the connection to {server} at {where}",
        "{what} reconnected to {server} at {where}",
    ),
    "full": (
        "{what}: {server} at {where} is full and refuses writes",
        "{what}: {server} at {where} takes writes again",
    ),
}


class GaveUp(TimeoutError):
    """:func:`retrying` ran out of time; ``last`` is the last error, ``attempts`` the failures."""

    def __init__(self, what: str, timeout: float, attempts: int, last: BaseException | None):
        super().__init__(
            f"{what}: no success within {timeout} s ({attempts} failed attempts; last error: {last})"
        )
        self.attempts = attempts
        self.last = last


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    transient: Callable[[BaseException], bool],
    outage: Outage,
    timeout: float,
    what: str = "call",
    kind: Callable[[BaseException], str] | None = None,
) -> T:
    """Await ``call()``, repeating it after a backoff while it fails transiently.

    The whole repetition, waits and a frozen server's silence included, is
    bounded by ``timeout`` seconds. Errors ``transient`` rejects are raised
    at once, unchanged.

    Args:
        call: Makes the awaitable to run; called once per attempt.
        transient: Whether an error may pass by itself (then the call is repeated).
        outage: Logs the outage and paces the attempts.
        timeout: Seconds for all attempts together.
        what: Names the call in :class:`GaveUp`'s message.
        kind: The kind of outage a failure means, for its log line (see
            :meth:`Outage.failed`); default ``"connection"``.

    Raises:
        GaveUp: No success within ``timeout`` (``last`` holds the last error).
    """
    attempts = 0
    last: BaseException | None = None
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while True:
                try:
                    result = await call()
                except Exception as exc:
                    if not transient(exc):
                        raise
                    last = exc
                    attempts += 1
                    what_kind = kind(exc) if kind is not None else "connection"
                    await asyncio.sleep(outage.failed(exc, kind=what_kind))
                else:
                    outage.recovered()
                    return result
    except TimeoutError:
        if not deadline.expired():
            raise
    raise GaveUp(what, timeout, attempts, last) from last
