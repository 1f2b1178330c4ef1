"""Every standalone script under examples/ runs, so that none of them rots.

A standalone script is a top-level ``examples/*.py`` with a ``__main__``
block. Those that tests/test_examples.py already runs with checks of its own
are left to it; the others run here, each must exit 0 without printing a
traceback, and print what ``EXPECTED`` says when it says something.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

EXPECTED = {
    "composition.py": [
        "line totals     = [3.0, 2.25, 14.0, 4.75]",
        "callback: every price is in",
        "pipeline result = total due: 28.80",
    ],
}


def standalone_scripts() -> list[Path]:
    return sorted(
        path for path in EXAMPLES.glob("*.py") if 'if __name__ == "__main__":' in path.read_text()
    )


def run_elsewhere() -> set[str]:
    """Scripts that tests/test_examples.py names, and so runs with checks of its own."""
    text = (REPO / "tests" / "test_examples.py").read_text()
    return {path.name for path in standalone_scripts() if f'"{path.name}"' in text}


def test_the_examples_are_found() -> None:
    names = {path.name for path in standalone_scripts()}
    assert {"quickstart.py", "composition.py"} <= names
    assert "quickstart.py" in run_elsewhere()
    assert set(EXPECTED) <= names - run_elsewhere()


@pytest.mark.parametrize(
    "script",
    [path for path in standalone_scripts() if path.name not in run_elsewhere()],
    ids=lambda path: path.name,
)
def test_example_script_runs(script: Path, tmp_path: Path) -> None:
    # Run from an empty directory, so a script that leaves files behind
    # (a SQLite database, say) leaves them there.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("TASKFLOW_BROKER_URL", None)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip(), "the example printed nothing"
    for line in EXPECTED.get(script.name, []):
        assert line in done.stdout
