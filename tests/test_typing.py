"""Checked by mypy --strict in CI: an ``unused ignore`` error means a wrong call stopped failing."""

from __future__ import annotations

import pytest

from taskflow import Actor, Message
from taskflow.brokers.memory import MemoryBroker

broker = MemoryBroker()


@broker.actor
async def add(x: int, y: int) -> int:
    return x + y


@broker.actor(queue="q", max_retries=1)
def greet(name: str) -> str:
    return f"hi {name}"


async def _calls() -> None:
    ok: Message[int] = await add.send(1, 2)
    also: Message[str] = await greet.send("a")
    value: int = await add(1, 2)
    await add.send("1", 2)  # type: ignore[arg-type]
    await add.send(1)  # type: ignore[call-arg]
    await greet.send(name=3)  # type: ignore[arg-type]
    wrong: Message[str] = await add.send(1, 2)  # type: ignore[assignment]
    del ok, also, value, wrong


def test_actor_types() -> None:
    a: Actor[[int, int], int] = add
    g: Actor[[str], str] = greet
    assert a.name == "add" and g.name == "greet"


@pytest.mark.anyio
async def test_calls_run() -> None:
    assert await add(1, 2) == 3
    assert await greet("x") == "hi x"
