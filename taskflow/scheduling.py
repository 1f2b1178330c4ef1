"""Periodic tasks: schedules, and the scheduler every worker runs.

A :class:`Schedule` sends one actor with fixed arguments at the fire times of
a cron expression (see :mod:`taskflow._cron` for the syntax and the DST
rule). Every worker runs :func:`run_schedules` in its task group; before it
sends a fire time it claims it on the broker (``Transport._claim_fire``:
an atomic claim keyed by schedule and fire time), so each fire time is sent
once however many workers run. A worker that starts looks back
``misfire_grace`` seconds: the latest fire time in that window that no worker
claimed (all were down) is sent once; older ones are dropped, never sent as a
burst.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

import anyio

from taskflow._cron import CronExpr
from taskflow._time import seconds, utcnow

if TYPE_CHECKING:
    from taskflow.actor import Actor
    from taskflow.broker import Broker

__all__ = ["DEFAULT_MISFIRE_GRACE", "Schedule", "run_schedules"]

logger = logging.getLogger("taskflow.scheduling")

#: Seconds after a fire time within which a worker that comes back still sends it.
DEFAULT_MISFIRE_GRACE = 60.0
#: Seconds a claim is kept beyond the grace (covers clocks of workers that differ).
_CLAIM_MARGIN = 600.0
#: Longest sleep of the scheduler between two looks at the clock.
_MAX_SLEEP = 1.0


class Schedule:
    """One periodic send of an actor.

    Attributes:
        name: The schedule's name (the actor's name unless given).
        actor: The actor sent.
        cron: The parsed cron expression, with its time zone.
        args: Positional arguments of every message.
        kwargs: Keyword arguments of every message.
        misfire_grace: Seconds after a fire time within which it is still sent.
    """

    def __init__(
        self,
        actor: Actor[Any, Any],
        cron: str,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        tz: str | dt.tzinfo = "UTC",
        misfire_grace: float | dt.timedelta = DEFAULT_MISFIRE_GRACE,
    ) -> None:
        self.actor = actor
        self.cron = CronExpr(cron, tz)
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.name = name or actor.name
        self.misfire_grace = seconds(misfire_grace)
        if self.misfire_grace < 0:
            raise ValueError("misfire_grace must not be negative")

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, {self.cron.expr!r}, tz={self.cron.tz!s})"

    def next_fire(self, after: dt.datetime | None = None) -> dt.datetime:
        """The first fire time after ``after`` (default: now), in UTC."""
        return self.cron.next_after(after or utcnow())

    async def last_fire(self) -> dt.datetime | None:
        """The latest fire time any worker claimed and sent, from the broker."""
        broker = self.actor.broker
        await broker.connect()
        at = await broker._last_fire(self.name)
        return None if at is None else dt.datetime.fromtimestamp(at, dt.UTC)


class _Cursor:
    """Where one schedule's scheduler stands: fire times up to ``since`` were looked at."""

    __slots__ = ("schedule", "since")

    def __init__(self, schedule: Schedule, now: dt.datetime) -> None:
        self.schedule = schedule
        self.since = now - dt.timedelta(seconds=schedule.misfire_grace)


async def _fire(broker: Broker, schedule: Schedule, at: dt.datetime) -> None:
    ttl = schedule.misfire_grace + _CLAIM_MARGIN
    if not await broker._claim_fire(schedule.name, at.timestamp(), ttl):
        return
    message = await schedule.actor.send_with_options(args=schedule.args, kwargs=schedule.kwargs)
    logger.info("schedule %s fired %s: message %s", schedule.name, at.isoformat(), message.id)


async def _tick(broker: Broker, cursor: _Cursor, now: dt.datetime) -> None:
    schedule = cursor.schedule
    floor = now - dt.timedelta(seconds=schedule.misfire_grace)
    latest = schedule.cron.last_at_or_before(now, max(cursor.since, floor))
    cursor.since = now
    if latest is None:
        return
    try:
        await _fire(broker, schedule, latest)
    except Exception:
        logger.exception("schedule %s could not send its fire time %s", schedule.name, latest)


async def run_schedules(broker: Broker) -> None:
    """Send ``broker``'s schedules at their fire times until cancelled (a worker runs this)."""
    schedules = list(broker.schedules.values())
    if not schedules:
        return
    now = utcnow()
    cursors = [_Cursor(s, now) for s in schedules]
    while True:
        now = utcnow()
        for cursor in cursors:
            await _tick(broker, cursor, now)
        soonest = min(c.schedule.cron.next_after(now) for c in cursors)
        wait = (soonest - utcnow()).total_seconds()
        await anyio.sleep(min(max(wait, 0.0), _MAX_SLEEP))
