from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskflow.rate_limits.backends import (
    MemoryBackend,
    RateLimitBackend,
    RedisBackend,
    SQLiteBackend,
)
from tests.conftest import REDIS_URL, require_service

BACKENDS = ["memory", "sqlite", "redis"]


async def make_backend(kind: str, tmp_path: Path) -> RateLimitBackend:
    if kind == "memory":
        return MemoryBackend()
    if kind == "sqlite":
        return SQLiteBackend(tmp_path / "limits.sqlite3")
    url = require_service("Redis", REDIS_URL, 6379)
    return RedisBackend(url, namespace=f"tf-test-rl-{secrets.token_hex(4)}")


async def _clean(backend: RateLimitBackend) -> None:
    if isinstance(backend, RedisBackend):
        keys = [k async for k in backend.client.scan_iter(f"{backend.namespace}:*")]
        if keys:
            await backend.client.delete(*keys)
    await backend.close()


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RateLimitBackend]:
    made = await make_backend(request.param, tmp_path)
    try:
        yield made
    finally:
        await _clean(made)
