"""Cron expressions: parsing and the next fire time in a time zone.

Five fields (minute hour day-of-month month day-of-week) or six with a
leading seconds field (second minute hour day-of-month month day-of-week).
Each field takes ``*``, numbers, ranges ``a-b``, steps ``*/n`` / ``a-b/n`` /
``a/n`` and comma lists; months and weekdays also take names (``jan``,
``mon-fri``); weekday 0 and 7 are Sunday. When both day-of-month and
day-of-week are restricted, a day matching either fires (as in Vixie cron).
``@yearly``, ``@monthly``, ``@weekly``, ``@daily`` and ``@hourly`` are
accepted.

Fire times are wall times of the schedule's time zone. Daylight saving time:

* a wall time skipped by a spring-forward gap fires once, at the first valid
  instant after the gap (every fire time inside one gap collapses into it);
* a wall time repeated by a fall-back fold fires once, at its first
  occurrence.

Written here rather than taken from a library: the maintained Python cron
libraries either lack the seconds field or leave the DST rule to the
caller, and the whole of it is this module.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["CronExpr"]

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
#: Each field's name, lowest and highest value, and value names.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
#: Years searched ahead for a match before an expression is called impossible.
_HORIZON_YEARS = 8
_UTC = dt.UTC


def _value(text: str, names: dict[str, int], field: str) -> int:
    key = text.lower()
    if key in names:
        return names[key]
    if not text.isdigit():
        raise ValueError(f"bad {field} value {text!r}")
    return int(text)


def _part(part: str, lo: int, hi: int, names: dict[str, int], field: str) -> set[int]:
    body, _, step_text = part.partition("/")
    step = int(step_text) if step_text.isdigit() else 0
    if step_text and step < 1:
        raise ValueError(f"bad {field} step in {part!r}")
    if body == "*":
        start, end = lo, hi
    elif "-" in body:
        a, _, b = body.partition("-")
        start, end = _value(a, names, field), _value(b, names, field)
    else:
        start = _value(body, names, field)
        end = hi if step_text else start
    if not lo <= start <= end <= hi:
        raise ValueError(f"{field} {part!r} is outside {lo}-{hi}")
    return set(range(start, end + 1, step or 1))


def _field(text: str, index: int) -> tuple[frozenset[int], bool]:
    """The values of one field, and whether it is a bare ``*`` (unrestricted)."""
    field, lo, hi, names = _FIELDS[index]
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"empty {field} in {text!r}")
        values |= _part(part, lo, hi, names, field)
    return frozenset(values), text == "*"


def _zone(tz: str | dt.tzinfo) -> dt.tzinfo:
    if isinstance(tz, dt.tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc


class CronExpr:
    """A parsed cron expression in a time zone.

    Args:
        expr: Five fields, or six with a leading seconds field, or a macro.
        tz: An IANA zone name or a tzinfo (default UTC).

    Raises:
        ValueError: The expression or the zone is invalid, or never fires.
    """

    def __init__(self, expr: str, tz: str | dt.tzinfo = "UTC") -> None:
        self.expr = expr
        self.tz = _zone(tz)
        fields = _MACROS.get(expr.strip().lower(), expr).split()
        if len(fields) == 5:
            fields = ["0", *fields]
        if len(fields) != 6:
            raise ValueError(f"cron expression {expr!r} needs 5 or 6 fields, not {len(fields)}")
        parsed = [_field(text, i) for i, text in enumerate(fields)]
        self.seconds, self.minutes, self.hours = (parsed[i][0] for i in range(3))
        self.days, any_day = parsed[3]
        self.months = parsed[4][0]
        weekdays, any_weekday = parsed[5]
        self.weekdays = frozenset(d % 7 for d in weekdays)
        # Vixie cron: restricted day-of-month and day-of-week fire on either.
        self._either = not any_day and not any_weekday
        self.next_after(dt.datetime(2000, 1, 1, tzinfo=_UTC))  # raises if it never fires

    def __repr__(self) -> str:
        return f"CronExpr({self.expr!r}, tz={self.tz!s})"

    def _day_matches(self, day: dt.date) -> bool:
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        return (in_month or in_week) if self._either else (in_month and in_week)

    def _next_wall(self, t: dt.datetime) -> dt.datetime:
        """The first naive wall time at or after ``t`` that the fields match."""
        horizon = t.year + _HORIZON_YEARS
        while t.year <= horizon:
            if t.month not in self.months:
                t = dt.datetime(t.year + t.month // 12, t.month % 12 + 1, 1)
            elif not self._day_matches(t.date()):
                t = dt.datetime.combine(t.date() + dt.timedelta(days=1), dt.time())
            elif t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + dt.timedelta(hours=1)
            elif t.minute not in self.minutes:
                t = t.replace(second=0) + dt.timedelta(minutes=1)
            elif t.second not in self.seconds:
                t += dt.timedelta(seconds=1)
            else:
                return t
        raise ValueError(f"cron expression {self.expr!r} never fires")

    def _instant(self, wall: dt.datetime) -> dt.datetime:
        """The UTC instant of a wall time: its first occurrence, or the end of its gap."""
        first = wall.replace(tzinfo=self.tz, fold=0).astimezone(_UTC)
        if first.astimezone(self.tz).replace(tzinfo=None) == wall:
            return first
        # Skipped by a gap: the first valid wall minute after it.
        probe = wall.replace(second=0)
        for _ in range(24 * 60):
            probe += dt.timedelta(minutes=1)
            at = probe.replace(tzinfo=self.tz).astimezone(_UTC)
            if at.astimezone(self.tz).replace(tzinfo=None) == probe:
                return at
        return first  # pragma: no cover - no zone has a day-long gap

    def next_after(self, after: dt.datetime) -> dt.datetime:
        """The first fire time strictly after ``after`` (an aware datetime), in UTC."""
        after = after.astimezone(_UTC)
        wall = after.astimezone(self.tz).replace(tzinfo=None, microsecond=0)
        # A wall time in a fold maps to an earlier instant: step past until later.
        while True:
            wall = self._next_wall(wall + dt.timedelta(seconds=1))
            instant = self._instant(wall)
            if instant > after:
                return instant

    def last_at_or_before(self, now: dt.datetime, since: dt.datetime) -> dt.datetime | None:
        """The latest fire time in ``(since, now]``, if any."""
        found = None
        t = self.next_after(since)
        while t <= now:
            found = t
            t = self.next_after(t)
        return found
