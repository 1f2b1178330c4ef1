from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_quickstart_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "add(1, 2)              = 3" in out
    assert "[0, 2, 4, 6, 8]" in out
    assert "delayed add(40, 2)     = 42" in out
    assert "succeeded after 3 attempts" in out


def test_demo_runs_end_to_end_on_sqlite() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--jobs", "60"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "enqueued 66 jobs" in out
    assert "all 66 jobs finished" in out
    assert "fetch: 60 pages" in out
    assert "dead letters: 0" in out
    assert "worker stopped cleanly (exit status 0)" in out


def test_rate_limits_example_caps_concurrency_at_10(redis_url: str) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "rate_limits.py"), redis_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "call_partner: 60 done, at most 10 at once (limit 10)" in out
    assert "send_mail: 10 sent" in out
    assert "dead letters: 0" in out
