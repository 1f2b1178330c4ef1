"""How long to wait before restarting a child that died."""

from __future__ import annotations


class Backoff:
    """Doubling restart delays, capped, forgotten once a child has run for a while.

    Args:
        first: Delay after the first failure, in seconds.
        cap: Longest delay, in seconds.
        stable_after: Seconds of uptime after which a child counts as healthy
            and the delays start over.
    """

    def __init__(self, first: float = 0.25, cap: float = 8.0, stable_after: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self.stable_after = stable_after
        self._failures = 0

    def next_delay(self, uptime: float) -> float:
        """Return the delay before restarting a child that died after ``uptime`` seconds."""
        if uptime >= self.stable_after:
            self._failures = 0
        delay = min(self.first * 2.0**self._failures, self.cap)
        self._failures += 1
        return delay

    def reset(self) -> None:
        """Start over, as after a deliberate restart."""
        self._failures = 0
