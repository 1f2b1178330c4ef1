"""The actors of the demo: run them with ``taskflow worker examples.demo_app:broker``.

The broker comes from ``TASKFLOW_BROKER_URL`` (default: a SQLite file in the
current directory, so no server is needed).
"""

from __future__ import annotations

import asyncio
import hashlib

import taskflow

broker = taskflow.broker_from_env(results=True)


@broker.actor(store_results=True, max_retries=3, min_backoff=0.1, max_backoff=1.0)
async def fetch(page: int) -> dict[str, int]:
    """Pretend to fetch a page: an I/O-bound async actor (thousands run at once)."""
    await asyncio.sleep(0.05 + (page % 7) * 0.03)
    return {"page": page, "words": 100 + (page * 37) % 900}


@broker.actor(store_results=True)
def digest(text: str) -> str:
    """A CPU-bound sync actor: runs in the worker's thread pool."""
    value = text.encode()
    for _ in range(2_000):
        value = hashlib.sha256(value).digest()
    return value.hex()[:16]
