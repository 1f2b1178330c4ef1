from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cli.procs import WorkerCli


@pytest.fixture
def worker_cli(tmp_path: Path) -> Iterator[Callable[..., WorkerCli]]:
    """Start ``taskflow worker`` parents; whatever is left of them is killed after the test."""
    started: list[WorkerCli] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerCli:
        markers = tmp_path / f"markers-{len(started)}"
        markers.mkdir()
        cli = WorkerCli(markers, tmp_path / f"worker-{len(started)}.log", list(args), env or {})
        started.append(cli)
        return cli

    yield start
    for cli in started:
        cli.kill_everything()
