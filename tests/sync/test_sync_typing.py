"""Checked by mypy --strict in CI: the ``*_sync`` methods are typed like their async twins.

An ``unused ignore`` error means a wrong call stopped failing.
"""

from __future__ import annotations

from taskflow import Message
from taskflow.brokers.memory import MemoryBroker

broker = MemoryBroker()


@broker.actor
async def add(x: int, y: int) -> int:
    return x + y


@broker.actor(queue="q")
def greet(name: str) -> str:
    return f"hi {name}"


def _calls() -> None:
    ok: Message[int] = add.send_sync(1, 2)
    also: Message[str] = greet.send_sync("a")
    value: int = ok.result_sync(timeout=1)
    text: str = also.result_sync()
    many: list[Message[int]] = add.send_many_sync([(1, 2), add.message(3, 4)])
    later: Message[int] = add.send_with_options_sync(args=(1, 2), delay=1.0, priority=3)
    add.send_sync("1", 2)  # type: ignore[arg-type]
    add.send_sync(1)  # type: ignore[call-arg]
    greet.send_sync(name=3)  # type: ignore[arg-type]
    wrong: Message[str] = add.send_sync(1, 2)  # type: ignore[assignment]
    bad: str = ok.result_sync()  # type: ignore[assignment]
    strs: list[Message[str]] = add.send_many_sync([(1, 2)])  # type: ignore[assignment]
    broker.close_sync()
    del value, text, many, later, wrong, bad, strs


def test_sync_methods_exist() -> None:
    for name in ("send_sync", "send_with_options_sync", "send_many_sync"):
        assert callable(getattr(add, name))
    assert callable(add.message(1, 2).result_sync)
    assert callable(broker.close_sync)


def _on_commit() -> None:
    add.send_on_commit(1, 2)
    add.send_on_commit("1", 2)  # type: ignore[arg-type]
    nothing: None = add.send_on_commit(1, 2)  # type: ignore[func-returns-value]
    del nothing
