"""Durations and clocks: the two time helpers every module needs.

Durations are float seconds or ``datetime.timedelta`` everywhere in the
public API; :func:`seconds` turns either into a float. Absolute times are
timezone-aware UTC datetimes from :func:`utcnow`.
"""

from __future__ import annotations

import datetime as dt


def seconds(value: float | dt.timedelta) -> float:
    """Return a duration in seconds from a float or a ``timedelta``."""
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def utcnow() -> dt.datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return dt.datetime.now(dt.UTC)
