"""Cron expressions, the DST rule, the broker API, misfires and ``taskflow cron list``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from taskflow import Broker
from taskflow._cron import CronExpr
from taskflow.brokers.memory import MemoryBroker
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.cli.app import app
from taskflow.scheduling import _Cursor, _tick

UTC = dt.UTC


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type,misc]


def fires(expr: str, start: dt.datetime, count: int, tz: str = "UTC") -> list[dt.datetime]:
    cron, out, t = CronExpr(expr, tz), [], start
    for _ in range(count):
        t = cron.next_after(t)
        out.append(t)
    return out


def test_five_and_six_fields_names_and_steps() -> None:
    assert fires("*/15 * * * *", at(2026, 1, 1, 0, 7), 2) == [
        at(2026, 1, 1, 0, 15),
        at(2026, 1, 1, 0, 30),
    ]
    assert fires("*/2 * * * * *", at(2026, 1, 1, 0, 0, 1), 2) == [
        at(2026, 1, 1, 0, 0, 2),
        at(2026, 1, 1, 0, 0, 4),
    ]
    # Saturday 5 Dec 2026 -> Monday and Tuesday at 06:00.
    assert fires("0 6 * * mon-fri", at(2026, 12, 5), 2) == [
        at(2026, 12, 7, 6),
        at(2026, 12, 8, 6),
    ]
    assert fires("0 0 1 jan,jul *", at(2026, 2, 1), 1) == [at(2026, 7, 1)]
    assert fires("@hourly", at(2026, 1, 1, 0, 30), 1) == [at(2026, 1, 1, 1)]
    # Day of month and day of week both restricted: either matches (13th or a Friday).
    assert fires("0 0 13 * fri", at(2026, 2, 1), 3) == [
        at(2026, 2, 6),
        at(2026, 2, 13),
        at(2026, 2, 20),
    ]


@pytest.mark.parametrize(
    "expr", ["* * *", "61 * * * *", "0 0 30 2 *", "* * * * * * *", "x * * * *", "*/0 * * * *"]
)
def test_bad_expressions_are_refused(expr: str) -> None:
    with pytest.raises(ValueError):
        CronExpr(expr)


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        CronExpr("* * * * *", "Mars/Olympus")


def test_time_zone_and_skipped_wall_time_fires_once_after_the_gap() -> None:
    # Berlin springs forward on 29 Mar 2026: 02:00-03:00 local does not exist.
    assert fires("30 2 * * *", at(2026, 3, 28, 12), 2, "Europe/Berlin") == [
        at(2026, 3, 29, 1),  # 03:00 CEST, the first valid instant after the gap
        at(2026, 3, 30, 0, 30),  # 02:30 CEST the next day
    ]
    # Every fire time inside the gap collapses into one.
    assert fires("*/20 * * * *", at(2026, 3, 29, 0, 30), 3, "Europe/Berlin") == [
        at(2026, 3, 29, 0, 40),  # 01:40 CET
        at(2026, 3, 29, 1, 0),  # 02:00, 02:20, 02:40 and 03:00 CEST: once
        at(2026, 3, 29, 1, 20),
    ]


def test_repeated_wall_time_fires_once() -> None:
    # Berlin falls back on 25 Oct 2026: 02:00-03:00 local happens twice.
    assert fires("30 2 * * *", at(2026, 10, 24, 12), 2, "Europe/Berlin") == [
        at(2026, 10, 25, 0, 30),  # the first 02:30 (CEST) only
        at(2026, 10, 26, 1, 30),
    ]
    # From inside the second pass of the repeated hour, the next is 03:00 CET.
    assert fires("*/30 * * * *", at(2026, 10, 25, 1, 10), 1, "Europe/Berlin") == [
        at(2026, 10, 25, 2, 0)
    ]


def test_cron_decorator_and_schedule_names() -> None:
    broker = MemoryBroker()

    @broker.cron("*/5 * * * *", tz="Europe/Berlin")
    @broker.actor
    async def sweep() -> None: ...

    @broker.actor
    async def report(kind: str) -> None: ...

    weekly = broker.schedule(report, cron="0 6 * * mon-fri", args=("weekly",), name="weekly")
    assert broker.schedules == {"sweep": broker.schedules["sweep"], "weekly": weekly}
    assert str(broker.schedules["sweep"].cron.tz) == "Europe/Berlin"
    assert str(weekly.cron.tz) == "UTC" and weekly.args == ("weekly",)
    with pytest.raises(ValueError, match="already exists"):
        broker.schedule(report, cron="* * * * *", name="weekly")
    with pytest.raises(TypeError, match="above @broker.actor"):
        broker.cron("* * * * *")(lambda: None)  # type: ignore[arg-type]


async def _sent(broker: Broker) -> int:
    return (await broker.stats("default")).ready


def _broker(tmp_path: Path) -> tuple[SQLiteBroker, Any]:
    broker = SQLiteBroker(tmp_path / "cron.db")

    @broker.actor
    async def job() -> None: ...

    return broker, job


@pytest.mark.anyio
async def test_misfire_within_grace_is_sent_once_never_a_burst(tmp_path: Path) -> None:
    broker, job = _broker(tmp_path)
    schedule = broker.schedule(job, cron="*/2 * * * * *")  # misfire_grace 60 s
    async with broker:
        # No worker ran for 20 s: ten fire times were missed; one comes back.
        now = at(2026, 1, 1, 0, 0, 21)
        for _ in range(3):  # three workers come back at once
            await _tick(broker, _Cursor(schedule, now), now)
        assert await _sent(broker) == 1
        assert await schedule.last_fire() == at(2026, 1, 1, 0, 0, 20)


@pytest.mark.anyio
async def test_misfire_past_grace_is_dropped(tmp_path: Path) -> None:
    broker, job = _broker(tmp_path)
    schedule = broker.schedule(job, cron="0 * * * *", misfire_grace=60)
    async with broker:
        late = at(2026, 1, 1, 1, 1, 30)  # 90 s after 01:00
        await _tick(broker, _Cursor(schedule, late), late)
        assert await _sent(broker) == 0
        early = at(2026, 1, 1, 2, 0, 30)  # 30 s after 02:00
        await _tick(broker, _Cursor(schedule, early), early)
        assert await _sent(broker) == 1


APP_MODULE = """
from taskflow.brokers.sqlite import SQLiteBroker

broker = SQLiteBroker({path!r})


@broker.cron("*/2 * * * * *", name="every-2s")
@broker.actor
async def tick() -> None: ...
"""


def test_cron_list_prints_last_and_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "broker.db")
    (tmp_path / "cron_list_app.py").write_text(APP_MODULE.format(path=path))
    monkeypatch.syspath_prepend(str(tmp_path))
    fired = at(2026, 1, 1, 0, 0, 2)

    async def claim() -> None:
        async with SQLiteBroker(path) as broker:
            assert await broker._claim_fire("every-2s", fired.timestamp(), 60)
            assert not await broker._claim_fire("every-2s", fired.timestamp(), 60)

    anyio.run(claim)
    result = CliRunner().invoke(app, ["cron", "list", "cron_list_app:broker"])
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split() == ["name", "actor", "cron", "tz", "last", "next"]
    name, actor, *_, last, upcoming = row.split()
    assert (name, actor) == ("every-2s", "tick")
    assert dt.datetime.fromisoformat(last) == fired
    soon = dt.datetime.fromisoformat(upcoming) - dt.datetime.now(UTC)
    assert dt.timedelta(0) < soon <= dt.timedelta(seconds=2)
    bad = CliRunner().invoke(app, ["cron", "list", "nosuch:broker"])
    assert bad.exit_code == 2
