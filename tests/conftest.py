from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

REDIS_URL = os.environ.get("TASKFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("TASKFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> str:
    """Return ``url`` if the server answers; else skip, or fail under TASKFLOW_REQUIRE_SERVICES=1."""
    if _answers(url, default_port):
        return url
    message = f"{name} is not answering at {url}"
    if os.environ.get("TASKFLOW_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (TASKFLOW_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    return require_service("Redis", REDIS_URL, 6379)


@pytest.fixture
def amqp_url() -> str:
    return require_service("RabbitMQ", AMQP_URL, 5672)
