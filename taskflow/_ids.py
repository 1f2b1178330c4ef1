"""Time-ordered, sortable message ids (ULID layout: 48-bit milliseconds, 80 random bits)."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: sorts like the number
# Two characters (10 bits) per lookup. The 26 characters split on a character
# boundary into 10 for the milliseconds (cached: a burst shares them) and 16
# for the random bits, so an id costs 8 lookups, not 26 shifts.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_TIME_SHIFTS = (40, 30, 20, 10, 0)
_RAND_SHIFTS = (70, 60, 50, 40, 30, 20, 10, 0)
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
_prefix: tuple[int, str] = (-1, "")


def new_id() -> str:
    """Return a 26-character id that sorts by creation time, monotonic within a process."""
    global _last_ms, _last_rand
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            # Same millisecond (or a clock step back): keep order by counting up.
            ms = _last_ms
            rand = _last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1
        _last_ms, _last_rand = ms, rand
    return _encode(ms, rand & ((1 << 80) - 1))


def _encode(ms: int, rand: int) -> str:
    """Crockford base32 of ``(ms << 80) | rand`` in 26 characters."""
    global _prefix
    cached = _prefix
    if cached[0] != ms:
        cached = _prefix = (ms, "".join([_PAIRS[ms >> s & 1023] for s in _TIME_SHIFTS]))
    return cached[1] + "".join([_PAIRS[rand >> s & 1023] for s in _RAND_SHIFTS])
