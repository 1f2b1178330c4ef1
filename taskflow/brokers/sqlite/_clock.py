"""The host clock of the SQLite broker: the wall clock's time, at the monotonic clock's pace.

Leases, delays and dead-letter TTLs are times stored in the file and compared
by every process on the host, so they need one clock that all of them read
alike and that a step of the wall clock (NTP, a manual ``date``) cannot move:
a step forward would expire every lease at once, a step back would keep a
dead worker's messages, and every message sent before it, for the length of
the step.

``time.monotonic()`` is such a clock on one host (``CLOCK_MONOTONIC`` on
Linux: shared by every process, never stepped, slewed by NTP like the wall
clock), but it starts again at each boot. So the first broker to open the
file after a boot stores an anchor, ``wall - monotonic`` at that moment,
under the boot's id (``/proc/sys/kernel/random/boot_id``), and every process
of that boot reads time as ``monotonic + anchor``: the wall clock's time as it
was at the anchor, advancing at the monotonic pace, the same in every
process. A new boot stores a new anchor, so times stay continuous across a
reboot. Where the system gives no boot id, an anchor within two minutes of
the process's own ``wall - monotonic`` is taken as this boot's (so a step of
more than two minutes there re-anchors the processes started after it).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

TABLE = "taskflow_clock"
SCHEMA = f"CREATE TABLE IF NOT EXISTS {TABLE} (boot TEXT PRIMARY KEY, anchor REAL NOT NULL)"
#: Without a boot id, anchors this close (seconds) count as the same boot.
SAME_BOOT = 120.0
#: The SQL function, registered on every broker connection, that reads this clock.
FUNCTION = "taskflow_now"


def boot_id() -> str:
    """This boot's id, or ``""`` where the system has none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class HostClock:
    """Seconds since the epoch by the anchored monotonic clock; see the module docstring."""

    def __init__(self) -> None:
        self.anchor: float | None = None

    def now(self) -> float:
        """The host time; the anchor must have been read (:meth:`read_anchor`)."""
        if self.anchor is None:
            raise RuntimeError("the host clock is read before its anchor")
        return time.monotonic() + self.anchor

    def read_anchor(self, conn: sqlite3.Connection) -> float:
        """Adopt this boot's anchor from the file, storing one if there is none.

        Runs inside the caller's write transaction, so that the first process
        of a boot stores the anchor and every later one reads it.
        """
        conn.execute(SCHEMA)
        boot, mine = boot_id(), time.time() - time.monotonic()
        for stored_boot, anchor in conn.execute(f"SELECT boot, anchor FROM {TABLE}"):
            if (boot and stored_boot == boot) or (not boot and abs(anchor - mine) < SAME_BOOT):
                self.anchor = float(anchor)
                return self.anchor
        conn.execute(f"DELETE FROM {TABLE}")
        conn.execute(f"INSERT INTO {TABLE} (boot, anchor) VALUES (?, ?)", (boot, mine))
        self.anchor = mine
        return mine
