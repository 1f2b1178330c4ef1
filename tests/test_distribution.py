"""The distribution is ``taskflow-aio``; every install hint names it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

import taskflow

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The bare name `taskflow` after `pip install` and its options, quoted or not.
OLD_INSTALL = re.compile(r"""pip3?\s+install\s+(?:-\S+\s+)*['"]?taskflow(?![\w-])""")


def test_the_distribution_is_taskflow_aio() -> None:
    assert PYPROJECT["project"]["name"] == "taskflow-aio"
    assert PYPROJECT["project"]["scripts"] == {"taskflow": "taskflow.cli:main"}


def test_version_flag_prints_the_installed_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskflow", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.strip() == f"taskflow {version('taskflow-aio')} (taskflow-aio)"


def _extra_names(requirements: list[str]) -> set[str]:
    names: set[str] = set()
    for requirement in requirements:
        match = re.fullmatch(r"taskflow-aio\[([\w,-]+)\]", requirement)
        if match:
            names |= set(match.group(1).split(","))
    return names


def test_all_pulls_in_every_other_extra_and_dev_pulls_in_all() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert _extra_names(extras["all"]) == set(extras) - {"all", "dev"}
    assert "all" in _extra_names(extras["dev"])


def test_the_readme_lists_every_extra_and_starts_with_the_install_command() -> None:
    readme = (ROOT / "README.md").read_text()
    extras = set(PYPROJECT["project"]["optional-dependencies"]) - {"dev"}
    listed = set(re.findall(r"^\| `([\w-]+)` \|", readme, flags=re.MULTILINE))
    assert extras <= listed
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "pip install 'taskflow-aio[redis]'" in first_screen


def test_no_file_quotes_the_old_install_command() -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in files:
        path = ROOT / name
        if (
            path.suffix not in {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ""}
            or not path.is_file()
        ):
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{name}: {m.group(0)}" for m in OLD_INSTALL.finditer(text)]
        offenders += [f"{name}: {m}" for m in re.findall(r"""['"]taskflow\[\w""", text)]
    assert offenders == []


def test_a_missing_extra_names_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [
        m for m in sys.modules if m == "redis" or m.startswith(("redis.", "taskflow.brokers.redis"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` fail

    with pytest.raises(ValueError, match=re.escape("pip install 'taskflow-aio[redis]'")):
        taskflow.broker_from_url("redis://127.0.0.1:6379/0")
