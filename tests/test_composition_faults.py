"""Group completion survives worker processes dying mid-group (real processes, SIGKILL).

Workers run as ``python -m taskflow worker tests.apps.composition_app:broker``
(one supervised child, which the supervisor restarts when it dies) on a
durable broker with a 2 s visibility timeout; the test sends the group from
this process and reads the ledger the actors append to.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
import redis

from taskflow import Broker, group
from tests.apps.composition_app import (
    LEDGER_ENV,
    NAMESPACE_ENV,
    QUEUE,
    URL_ENV,
    build,
    read_ledger,
)
from tests.cli.procs import WorkerCli, alive

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

Row = tuple[int, str, str, int, str]


class Setup:
    def __init__(self, url: str, namespace: str, tmp_path: Path) -> None:
        self.url = url
        self.namespace = namespace
        self.tmp_path = tmp_path
        self.ledger = tmp_path / "ledger.log"
        self.broker: Broker = build(url, namespace)
        self.member = self.broker.actors["member"]
        self.completed = self.broker.actors["completed"]
        self.group_ids: list[str] = []

    def rows(self) -> list[Row]:
        return read_ledger(self.ledger)

    def start_worker(self) -> WorkerCli:
        (self.tmp_path / "markers").mkdir(exist_ok=True)
        return WorkerCli(
            self.tmp_path / "markers",
            self.tmp_path / "worker.log",
            ["tests.apps.composition_app:broker", "--processes", "1", "--concurrency", "10"],
            {URL_ENV: self.url, NAMESPACE_ENV: self.namespace, LEDGER_ENV: str(self.ledger)},
        )


def _forget_redis(url: str, namespace: str, ids: list[str]) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = set(client.scan_iter(match="{" + namespace + "}:*", count=1000))
        for i in ids:
            keys |= set(client.scan_iter(match=f"taskflow:*{i}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "redis"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    if request.param == "sqlite":
        s = Setup(f"sqlite:///{tmp_path / 'broker.sqlite3'}", "", tmp_path)
    else:
        url: str = request.getfixturevalue("redis_url")
        s = Setup(url, f"tf-composition-{uuid.uuid4().hex[:12]}", tmp_path)
    async with s.broker:
        yield s
    if request.param == "redis":
        ids = sorted({row[2] for row in s.rows()} | set(s.group_ids))
        _forget_redis(s.url, s.namespace, ids)


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)


def events(rows: list[Row], event: str, argument: str | None = None) -> list[Row]:
    return [r for r in rows if r[1] == event and (argument is None or r[4] == argument)]


def index_of_last(rows: list[Row], event: str, argument: str) -> int:
    return max(i for i, r in enumerate(rows) if r[1] == event and r[4] == argument)


async def drained(s: Setup) -> None:
    await s.broker.join(QUEUE, timeout=30)
    stats = await s.broker.stats(QUEUE)
    assert stats.dead == 0, await s.broker.dead_letters(QUEUE)


async def test_sigkill_mid_group_still_completes_once(setup: Setup) -> None:
    s = setup
    # Given: a group of three quick members and three slow ones.
    members = [s.member.message(i, 20) for i in range(3)]
    members += [s.member.message(i, 2500) for i in range(3, 6)]
    g = group(members).add_completion_callback(s.completed.message("six"))
    s.group_ids.append(g.id)
    await g.run()
    cli = s.start_worker()
    try:
        # When: the worker is SIGKILLed while the slow members run.
        await eventually(
            lambda: len(events(s.rows(), "done")) == 3 and len(events(s.rows(), "start")) == 6,
            30,
            "quick members done and slow ones started",
        )
        [victim] = {r[0] for r in s.rows()}
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: not alive(victim), 10, "the victim to die")
        # Expect: the slow members come back, and the callback runs once at the end.
        assert await g.results(timeout=40) == list(range(6))
        await drained(s)
    finally:
        cli.kill_everything()
    rows = s.rows()
    assert [r for r in rows if r[0] == victim and r[1] == "done"] == events(rows, "done")[:3]
    for i in ("3", "4", "5"):
        assert [(r[0] == victim, r[3]) for r in events(rows, "start", i)] == [(True, 1), (False, 2)]
        [done] = events(rows, "done", i)
        assert done[0] != victim
    [callback] = events(rows, "callback")
    assert callback[0] != victim
    assert rows.index(callback) > max(index_of_last(rows, "done", str(i)) for i in range(6))


async def test_member_dying_after_it_was_counted_is_not_counted_twice(setup: Setup) -> None:
    s = setup
    # Given: a group whose first member kills its worker after it succeeded and
    # was counted, but before its ack, and whose last member is slow.
    crashing = s.member.message_with_options(args=(0, 10), crash_after_success=True)
    g = group([crashing, s.member.message(1, 10), s.member.message(2, 2500)])
    g.add_completion_callback(s.completed.message("three"))
    s.group_ids.append(g.id)
    await g.run()
    cli = s.start_worker()
    try:
        await eventually(lambda: bool(events(s.rows(), "crash")), 30, "the crash")
        [crash] = events(s.rows(), "crash")
        await eventually(lambda: not alive(crash[0]), 10, "the crashed worker to die")
        # When: the first member is redelivered and succeeds again.
        assert await g.results(timeout=40) == [0, 1, 2]
        await drained(s)
    finally:
        cli.kill_everything()
    rows = s.rows()
    # The crash happened after the member was done, and it ran again.
    assert [r[3] for r in events(rows, "done", "0")] == [1, 2]
    assert crash[2] == crashing.id and crash[3] == 1
    # Expect: one callback, after the slow member finished (counting the first
    # member twice would have completed the group early).
    [callback] = events(rows, "callback")
    assert rows.index(callback) > index_of_last(rows, "done", "2")
