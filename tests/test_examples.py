from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_quickstart_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "add(1, 2)              = 3" in out
    assert "[0, 2, 4, 6, 8]" in out
    assert "delayed add(40, 2)     = 42" in out
    assert "succeeded after 3 attempts" in out
