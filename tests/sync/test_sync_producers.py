"""``send_sync`` and friends, in this process, against SQLite and Redis."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import taskflow
from tests.sync.servers import Target


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("taskflow-sync-")]


def declare(broker: taskflow.Broker) -> taskflow.Actor[[int, int], int]:
    @broker.actor(store_results=True)
    async def add(x: int, y: int) -> int:
        return x + y

    return add


def test_threads_send_at_once_through_one_background_loop(target: Target) -> None:
    broker = target.broker()
    add = declare(broker)
    before = len(sync_threads())
    ids: list[str] = []
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            ids.extend(add.send_sync(n, i).id for i in range(25))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    assert len(set(ids)) == 200
    assert len(sync_threads()) == before + 1  # one loop thread for the broker, however many senders
    many = add.send_many_sync([(1, 2), (3, 4)])
    later = add.send_with_options_sync(args=(5, 6), delay=60)
    assert [m.args for m in many] == [(1, 2), (3, 4)] and later.eta is not None
    stats = _stats_sync(broker)
    assert (stats.ready, stats.delayed) == (202, 1)

    broker.close_sync()
    assert len(sync_threads()) == before
    add.send_sync(7, 8)  # connects again, on a new loop thread
    assert _stats_sync(broker).ready == 203
    broker.close_sync()
    assert len(sync_threads()) == before


def _stats_sync(broker: taskflow.Broker) -> taskflow.QueueStats:
    from taskflow import _sync

    return _sync.run(broker, lambda: broker.stats("default"), sync_form="", await_form="")


@pytest.mark.anyio
async def test_called_from_a_running_loop_they_name_the_await_form(target: Target) -> None:
    broker = target.broker()
    add = declare(broker)
    message = add.message(1, 2).bind(broker)
    calls: list[tuple[Callable[[], Any], str]] = [
        (lambda: add.send_sync(1, 2), "await add.send(...)"),
        (lambda: add.send_with_options_sync(args=(1, 2)), "await add.send_with_options(...)"),
        (lambda: add.send_many_sync([(1, 2)]), "await add.send_many(...)"),
        (lambda: message.result_sync(timeout=1), "await message.result(...)"),
        (broker.close_sync, "await broker.close()"),
    ]
    for call, await_form in calls:
        with pytest.raises(
            RuntimeError, match=f"running event loop.*use `{re.escape(await_form)}`"
        ):
            call()
    async with broker:
        assert await broker.stats("default") == taskflow.QueueStats(0, 0, 0, 0)  # nothing sent


@pytest.mark.anyio
async def test_sync_actors_in_a_worker_send_on_the_workers_loop(target: Target) -> None:
    broker = target.broker()
    add = declare(broker)

    @broker.actor(store_results=True)
    def relay(x: int) -> int:  # a sync actor, in the worker's thread pool
        return add.send_sync(x, x).result_sync(timeout=10)

    before = len(sync_threads())
    async with broker, taskflow.Worker(broker, concurrency=20):
        messages = await relay.send_many([(n,) for n in range(10)])
        assert [await m.result(timeout=20) for m in messages] == [2 * n for n in range(10)]
        # From a thread that is not the worker's, too:
        sent = await anyio.to_thread.run_sync(lambda: add.send_sync(20, 1))
        assert await sent.result(timeout=10) == 21
        assert len(sync_threads()) == before  # no loop of its own: the broker's loop runs
    assert len(sync_threads()) == before


# The sockets a closed loop leaves behind can only be dropped, and warn when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_connections_of_a_stopped_loop_are_made_afresh(target: Target) -> None:
    broker = target.broker()
    add = declare(broker)
    asyncio.run(broker.connect())  # connected on a loop that is now closed
    add.send_sync(1, 2)
    add.send_sync(3, 4)
    assert _stats_sync(broker).ready == 2
    broker.close_sync()
    del broker, add
    gc.collect()  # here, where the warnings of the dropped sockets are expected


def test_result_sync_raises_like_the_async_form(target: Target) -> None:
    broker = target.broker()
    add = declare(broker)
    message = add.send_sync(1, 2)
    with pytest.raises(taskflow.ResultTimeout):
        message.result_sync(timeout=0.2)
    with pytest.raises(taskflow.TaskflowError, match="not bound"):
        taskflow.Message[int](queue="default", actor="add").result_sync(timeout=1)
    broker.close_sync()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_asyncio_run_twice_connects_again(target: Target) -> None:
    assert _send_twice_then_count(target.broker()) == 2
    gc.collect()  # here, where the warnings of the sockets of the first loop are expected


def _send_twice_then_count(broker: taskflow.Broker) -> int:
    add = declare(broker)
    asyncio.run(add.send(1, 2))
    asyncio.run(add.send(3, 4))  # "Event loop is closed" before: connections of the first loop

    async def count() -> int:
        async with broker:
            return (await broker.stats("default")).ready

    return asyncio.run(count())
