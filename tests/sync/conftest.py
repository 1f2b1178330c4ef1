from __future__ import annotations

from tests.sync.servers import target  # noqa: F401 - a fixture
