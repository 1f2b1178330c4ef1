from __future__ import annotations

from tests.cli.conftest import worker_cli  # noqa: F401 - the fixture, shared
