"""Chaos on Redis: a worker tree under SIGKILLs and Redis restarts keeps every promise.

See ``tests/apps/chaos.py`` for the run and its ledger; ``benchmarks/chaos.py``
runs the same for as long as one likes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.chaos import load_target, run_chaos
from tests.apps.redis_app import RedisChaos

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def target(tmp_path: Path) -> Iterator[RedisChaos]:
    t = load_target("redis", tmp_path / "target")
    assert isinstance(t, RedisChaos)
    yield t
    t.close()


@pytest.mark.timeout(180)
async def test_chaos_redis(target: RedisChaos, tmp_path: Path) -> None:
    ledger = await run_chaos(target, tmp_path / "run", seconds=35, rate=100, fault_every=4)
    print("\n".join(ledger.lines()))
    # The faults happened: children killed and restarted, Redis down and back.
    assert ledger.child_kills >= 2 and sum(ledger.server_faults.values()) >= 1, ledger.lines()
    assert ledger.refused > 0  # sends during an outage were refused, not lost
    assert ledger.sent >= 2000 and ledger.delayed > 0 and ledger.retried > 0
    assert not ledger.problems(), ledger.lines()
