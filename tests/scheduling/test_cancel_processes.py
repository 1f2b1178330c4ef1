"""Cancelling messages across processes: running async and sync actors, a delayed message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from taskflow import Broker, ResultFailed, pipeline
from taskflow.brokers.rabbitmq import RabbitMQBroker
from taskflow.brokers.redis import RedisBroker
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.results.redis import RedisResults
from tests.apps.cancel_app import MARKERS_ENV
from tests.cli.procs import REPO

pytestmark = pytest.mark.slow

APP = "tests.apps.cancel_app:broker"


@pytest.fixture(params=["sqlite", "redis", "rabbitmq"])
def cancel_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {MARKERS_ENV: str(markers)}
    if request.param == "rabbitmq":
        env["TASKFLOW_TEST_CANCEL_AMQP"] = request.getfixturevalue("amqp_url")
        env["TASKFLOW_TEST_CANCEL_REDIS"] = request.getfixturevalue("redis_url")
        env["TASKFLOW_TEST_CANCEL_NAMESPACE"] = f"cancel-{uuid.uuid4().hex[:8]}"
    elif request.param == "redis":
        env["TASKFLOW_TEST_CANCEL_REDIS"] = request.getfixturevalue("redis_url")
        env["TASKFLOW_TEST_CANCEL_NAMESPACE"] = f"cancel-{uuid.uuid4().hex[:8]}"
    else:
        env["TASKFLOW_TEST_CANCEL_SQLITE"] = str(tmp_path / "broker.db")
    return env


def _producer(env: dict[str, str]) -> Broker:
    if "TASKFLOW_TEST_CANCEL_AMQP" in env:
        namespace = env["TASKFLOW_TEST_CANCEL_NAMESPACE"]
        results = RedisResults(env["TASKFLOW_TEST_CANCEL_REDIS"], namespace=namespace)
        return RabbitMQBroker(
            env["TASKFLOW_TEST_CANCEL_AMQP"], prefix=f"{namespace}.", results=results
        )
    if "TASKFLOW_TEST_CANCEL_REDIS" in env:
        return RedisBroker(
            env["TASKFLOW_TEST_CANCEL_REDIS"],
            namespace=env["TASKFLOW_TEST_CANCEL_NAMESPACE"],
            results=True,
        )
    return SQLiteBroker(env["TASKFLOW_TEST_CANCEL_SQLITE"], results=True)


@pytest.fixture
def worker(cancel_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskflow", "worker", APP, "--processes", "1"],
            cwd=REPO,
            env={**os.environ, **cancel_env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.fixture
async def producer(cancel_env: dict[str, str]) -> AsyncIterator[Broker]:
    # The app's actors, declared again in this process on a broker of its own.
    import tests.apps.cancel_app as app

    broker = _producer(cancel_env)
    for actor in app.broker.actors.values():
        broker.actor(name=actor.name, **actor.options)(actor.fn)
    async with broker:
        yield broker
        if isinstance(broker, RabbitMQBroker):
            await broker.delete_queue("default")


async def _marker(markers: Path, name: str, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while not (markers / name).exists():
            await anyio.sleep(0.02)


async def _dead(broker: Broker, timeout: float = 10) -> list[tuple[str, str]]:
    """The dead letters of the default queue, once there is one (the result is stored first)."""
    with anyio.fail_after(timeout):
        while not (dead := await broker.dead_letters("default")):
            await anyio.sleep(0.02)
    return [(d.id, d.reason) for d in dead]


async def _failed_type(message: Any, timeout: float = 10) -> str:
    with pytest.raises(ResultFailed) as info:
        await message.result(timeout=timeout)
    return str(info.value.type_name)


@pytest.mark.anyio
@pytest.mark.parametrize("actor_name", ["long_async", "long_sync"])
async def test_running_actor_is_cancelled_from_another_process(
    actor_name: str,
    cancel_env: dict[str, str],
    worker: subprocess.Popen[bytes],
    producer: Broker,
) -> None:
    markers = Path(cancel_env[MARKERS_ENV])
    actor = producer.actors[actor_name]
    message = await actor.send()
    await _marker(markers, f"started-{message.id}", 20)
    started = time.monotonic()
    await message.cancel()
    assert await _failed_type(message) == "Cancelled"
    assert time.monotonic() - started < 3  # stopped within about a second, plus the result
    assert await _dead(producer) == [(message.id, "cancelled")]
    assert not (markers / f"finished-{message.id}").exists()
    assert worker.poll() is None
    # Not retried: it stays dead, and the started marker was made once.
    assert (await producer.stats("default")).delayed == 0


@pytest.mark.anyio
async def test_delayed_message_cancelled_never_runs(
    cancel_env: dict[str, str], worker: subprocess.Popen[bytes], producer: Broker
) -> None:
    markers = Path(cancel_env[MARKERS_ENV])
    message = await producer.actors["quick"].send_with_options(delay=1.5)
    control = await producer.actors["quick"].send()
    await message.cancel()
    await _marker(markers, f"ran-{control.id}", 20)  # the worker runs
    assert await _failed_type(message) == "Cancelled"
    assert not (markers / f"ran-{message.id}").exists()
    assert await _dead(producer) == [(message.id, "cancelled")]


@pytest.mark.anyio
async def test_cancelled_step_stops_its_pipeline(
    cancel_env: dict[str, str], worker: subprocess.Popen[bytes], producer: Broker
) -> None:
    markers = Path(cancel_env[MARKERS_ENV])
    first = producer.actors["long_async"].message()
    then = producer.actors["quick"].message()
    await pipeline([first, then]).run()
    await _marker(markers, f"started-{first.id}", 20)
    await producer.cancel(first.id)
    assert await _failed_type(first.bind(producer)) == "Cancelled"
    await anyio.sleep(0.5)
    assert not [name for name in os.listdir(markers) if name.startswith("ran-")]
