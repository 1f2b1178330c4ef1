"""Results and callbacks through a real worker, on the MemoryBroker."""

from __future__ import annotations

from typing import Any

import pytest

from taskflow import Broker, Worker
from taskflow.brokers.memory import MemoryBroker

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {"min_backoff": 0.01, "max_backoff": 0.02}


async def drain(broker: Broker, *queues: str) -> None:
    async with Worker(broker, list(queues) or ["default"]):
        for queue in queues or ("default",):
            await broker.join(queue, timeout=10)


def callback_actors(broker: Broker) -> tuple[Any, Any, list[tuple[str, str, Any]]]:
    calls: list[tuple[str, str, Any]] = []

    @broker.actor
    async def succeeded(message_id: str, result: Any) -> None:
        calls.append(("success", message_id, result))

    @broker.actor
    async def failed(message_id: str, error: dict[str, str]) -> None:
        calls.append(("failure", message_id, error))

    return succeeded, failed, calls


async def test_on_success_and_on_failure_per_actor() -> None:
    broker = MemoryBroker()
    succeeded, failed, calls = callback_actors(broker)
    attempts: list[int] = []

    @broker.actor(on_success=succeeded, on_failure="failed")
    async def double(x: int) -> int:
        return 2 * x

    @broker.actor(on_success=succeeded, on_failure=failed, max_retries=2, **FAST)
    async def broken() -> None:
        attempts.append(1)
        raise KeyError("missing")

    async with broker:
        ok = await double.send(21)
        bad = await broken.send()
        await drain(broker)
    assert len(attempts) == 3  # retried twice, and on_failure ran only for the final one
    assert ("success", ok.id, 42) in calls
    [failure] = [c for c in calls if c[0] == "failure"]
    assert failure[1] == bad.id
    error = failure[2]
    assert error["type"] == "KeyError"
    assert error["message"] == "'missing'"
    assert 'raise KeyError("missing")' in error["traceback"]
    assert len(calls) == 2


async def test_on_success_and_on_failure_per_message() -> None:
    broker = MemoryBroker()
    succeeded, failed, calls = callback_actors(broker)

    @broker.actor(on_success="nobody")
    async def job(fail: bool) -> str:
        if fail:
            raise ValueError("asked to")
        return "fine"

    async with broker:
        # An Actor object in a message's options travels by name.
        ok = await job.send_with_options(args=(False,), on_success=succeeded)
        bad = await job.send_with_options(args=(True,), on_failure=failed, max_retries=0)
        await drain(broker)
    assert sorted((c[0], c[1]) for c in calls) == sorted([("success", ok.id), ("failure", bad.id)])
    assert ("success", ok.id, "fine") in calls


async def test_callback_option_must_name_an_actor() -> None:
    broker = MemoryBroker()

    @broker.actor
    async def job() -> None:
        return None

    async with broker:
        with pytest.raises(TypeError, match="callback"):
            await job.send_with_options(on_success=object())


async def test_none_turns_off_an_actor_callback_for_one_message() -> None:
    broker = MemoryBroker()
    succeeded, _, calls = callback_actors(broker)

    @broker.actor(on_success=succeeded)
    async def job(x: int) -> int:
        return x

    async with broker:
        loud = await job.send(1)
        await job.send_with_options(args=(2,), on_success=None)
        await drain(broker)
    assert calls == [("success", loud.id, 1)]
