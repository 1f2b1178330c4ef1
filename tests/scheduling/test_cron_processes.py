"""Cron across real worker processes: each fire time sent exactly once.

Three ``taskflow worker`` processes run the same schedule (every 2 s, the
seconds field); every fire time must be run exactly once, also after one of
them is killed with SIGKILL while the schedule keeps firing.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.apps.cron_app import EVERY, LEDGER_ENV, create_ledger, runs
from tests.cli.procs import REPO, wait_until

pytestmark = pytest.mark.slow

APP = "tests.apps.cron_app:broker"


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "taskflow", "worker", APP, "--processes", "1"],
            cwd=REPO,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


_FIRED = re.compile(r"schedule every-2s fired (\S+): message (\S+)")


def _fired(log: Path) -> list[tuple[dt.datetime, str]]:
    """Every fire time a worker claimed and sent, from the workers' log lines."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [(dt.datetime.fromisoformat(at), mid) for at, mid in _FIRED.findall(text)]


def _fire_times(log: Path) -> Counter[dt.datetime]:
    """How many times each fire time was sent, whichever worker sent it."""
    return Counter(at for at, _ in _fired(log))


def _env(
    broker: str, tmp_path: Path, redis_url: str | None, amqp_url: str | None = None
) -> dict[str, str]:
    env = {LEDGER_ENV: str(tmp_path / "ledger.db")}
    if amqp_url is not None:
        env["TASKFLOW_TEST_CRON_AMQP"] = amqp_url
    if broker in ("redis", "rabbitmq"):
        assert redis_url is not None
        env["TASKFLOW_TEST_CRON_REDIS"] = redis_url
        env["TASKFLOW_TEST_CRON_NAMESPACE"] = f"cron-{uuid.uuid4().hex[:8]}"
    else:
        env["TASKFLOW_TEST_CRON_SQLITE"] = str(tmp_path / "broker.db")
    return env


@pytest.fixture(params=["sqlite", "redis", "rabbitmq"])
def cron_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    # RabbitMQ claims fire times in its result backend: RedisResults here.
    kind = request.param
    redis_url = request.getfixturevalue("redis_url") if kind != "sqlite" else None
    amqp_url = request.getfixturevalue("amqp_url") if kind == "rabbitmq" else None
    return _env(kind, tmp_path, redis_url, amqp_url)


def test_three_workers_fire_each_time_once_and_survive_a_kill(
    cron_env: dict[str, str], tmp_path: Path
) -> None:
    ledger = cron_env[LEDGER_ENV]
    create_ledger(ledger)
    log = tmp_path / "workers.log"
    workers = [_start(cron_env, log) for _ in range(3)]
    try:
        wait_until(lambda: len(_fire_times(log)) >= 3, 30, "three fire times")
        os.killpg(workers[0].pid, signal.SIGKILL)
        assert workers[0].wait(10) == -signal.SIGKILL  # the fault happened
        killed_at = len(_fire_times(log))
        wait_until(lambda: len(_fire_times(log)) >= killed_at + 3, 30, "three more fires")
        sent = {mid for _, mid in _fired(log)}
        wait_until(lambda: sent <= {r[0] for r in runs(ledger)}, 30, "the fired messages to run")
    finally:
        for w in workers[1:]:
            os.killpg(w.pid, signal.SIGTERM)
        for w in workers:
            w.wait(30)
    fires = _fire_times(log)
    # Each fire time was sent by exactly one worker, and each message it sent ran.
    assert set(fires.values()) == {1}, (fires, log.read_text()[-3000:])
    assert sent <= {r[0] for r in runs(ledger)}
    ordered = sorted(fires)
    # No fire time lost between the first and the last, across the kill.
    step = dt.timedelta(seconds=EVERY)
    assert all(b - a == step for a, b in zip(ordered, ordered[1:], strict=False)), ordered
