"""Results, callbacks, groups and pipelines on every broker in ``FACTORIES``.

Brokers with a store of their own get ``results=True``; the others (RabbitMQ)
get a :class:`RedisResults` in a namespace of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from taskflow import Broker, ResultFailed, ResultTimeout, Worker, group, pipeline
from taskflow.results import ResultBackend
from taskflow.results.memory import MemoryResults
from taskflow.results.redis import RedisResults
from taskflow.results.sqlite import SQLiteResults

pytestmark = pytest.mark.anyio

BUILT_IN: dict[str, type[ResultBackend]] = {
    "memory": MemoryResults,
    "sqlite": SQLiteResults,
    "redis": RedisResults,
}


def _delete(url: str, pattern: str | None, keys: set[str]) -> None:
    client = redis.Redis.from_url(url)
    try:
        found = set(keys)
        if pattern is not None:
            found |= {k.decode() for k in client.scan_iter(match=pattern, count=1000)}
        if found:
            client.delete(*found)
    finally:
        client.close()


@pytest.fixture
def broker_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    name = request.node.callspec.params["broker"]
    if name in BUILT_IN:
        return {"results": True}
    # Brokers without a store of their own (RabbitMQ) take a backend object.
    url = request.getfixturevalue("redis_url")
    namespace = f"test-results-{uuid.uuid4().hex[:12]}"
    request.addfinalizer(lambda: _delete(url, f"{namespace}:*", set()))
    return {"results": RedisResults(url, namespace=namespace)}


@pytest.fixture(autouse=True)
def forget_redis_keys(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Delete what a ``results=True`` Redis backend wrote in its shared namespace."""
    backend = broker.results
    if not isinstance(backend, RedisResults):
        yield
        return
    written: set[str] = set()
    ns = backend.namespace
    for hook, keys in (
        ("_put", lambda k: {f"{ns}:result:{{{k}}}", f"{ns}:result:{{{k}}}:ready"}),
        ("_incr", lambda k: {f"{ns}:counter:{k}"}),
        ("_add", lambda k: {f"{ns}:set:{k}"}),
    ):
        real = getattr(backend, hook)

        def spy(key: str, *args: Any, _real: Any = real, _keys: Any = keys) -> Any:
            written.update(_keys(key))
            return _real(key, *args)

        monkeypatch.setattr(backend, hook, spy)
    yield
    _delete(backend.url, None, written)


@pytest.fixture
async def worker(broker: Broker, queue: str) -> AsyncIterator[Worker]:
    async with Worker(broker, [queue], concurrency=8) as w:
        yield w


def declare(broker: Broker, queue: str) -> Any:
    ran: list[tuple[str, Any]] = []

    @broker.actor(queue=queue, store_results=True, result_ttl=120)
    async def add(x: int, y: int) -> int:
        ran.append(("add", (x, y)))
        return x + y

    @broker.actor(queue=queue)
    async def total(xs: list[int]) -> int:
        ran.append(("total", xs))
        return sum(xs)

    @broker.actor(queue=queue, max_retries=0)
    async def fail(*args: Any) -> None:
        raise LookupError("no such thing")

    @broker.actor(queue=queue)
    async def done(tag: str) -> None:
        ran.append(("done", tag))

    @broker.actor(queue=queue)
    async def succeeded(message_id: str, result: Any) -> None:
        ran.append(("succeeded", (message_id, result)))

    @broker.actor(queue=queue)
    async def failed(message_id: str, error: dict[str, str]) -> None:
        ran.append(("failed", (message_id, error["type"])))

    return add, total, fail, done, ran


async def test_broker_results_true_uses_the_built_in_store(
    broker: Broker, request: pytest.FixtureRequest
) -> None:
    name = request.node.callspec.params["broker"]
    expected = BUILT_IN.get(name, RedisResults)
    assert type(broker.results) is expected


async def test_result_value_failure_and_timeout(broker: Broker, queue: str, worker: Worker) -> None:
    add, _, fail, _, _ = declare(broker, queue)
    ok = await add.send(2, 3)
    bad = await fail.send_with_options(store_results=True)
    assert await ok.result(timeout=10) == 5
    with pytest.raises(ResultFailed) as info:
        await bad.result(timeout=10)
    assert info.value.type_name == "LookupError"
    assert "no such thing" in info.value.message
    assert "raise LookupError" in info.value.traceback
    never = add.message(0, 0)  # never sent
    with pytest.raises(ResultTimeout):
        await never.result(timeout=0.3)


async def test_only_the_final_outcome_is_stored(broker: Broker, queue: str, worker: Worker) -> None:
    attempts: list[int] = []

    @broker.actor(
        queue=queue, store_results=True, max_retries=3, min_backoff=0.01, max_backoff=0.02
    )
    async def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return len(attempts)

    message = await flaky.send()
    assert await message.result(timeout=10) == 3
    await broker.join(queue, timeout=10)
    assert len(attempts) == 3


async def test_callbacks(broker: Broker, queue: str, worker: Worker) -> None:
    add, _, fail, _, ran = declare(broker, queue)
    ok = await add.send_with_options(args=(1, 1), on_success="succeeded")
    bad = await fail.send_with_options(on_failure="failed")
    await broker.join(queue, timeout=10)
    assert sorted(r for r in ran if r[0] in ("succeeded", "failed")) == sorted(
        [("succeeded", (ok.id, 2)), ("failed", (bad.id, "LookupError"))]
    )


async def test_design_examples(broker: Broker, queue: str, worker: Worker) -> None:
    add, *_ = declare(broker, queue)
    message = await add.send(1, 2)
    assert await message.result(timeout=10) == 3
    g = group([add.message(1, 2), add.message(3, 4)])
    await g.run()
    assert await g.results(timeout=10) == [3, 7]
    p = pipeline([add.message(1, 2), add.message_with_options(args=(10,))])
    await p.run()
    assert await p.result(timeout=10) == 13


async def test_group_completion_runs_once(broker: Broker, queue: str, worker: Worker) -> None:
    add, _, _, done, ran = declare(broker, queue)
    g = group([add.message(i, 1) for i in range(20)])
    g.add_completion_callback(done.message("twenty"))
    await g.run()
    assert await g.results(timeout=20) == [i + 1 for i in range(20)]
    await broker.join(queue, timeout=10)
    assert [r for r in ran if r[0] == "done"] == [("done", "twenty")]


async def test_nesting(broker: Broker, queue: str, worker: Worker) -> None:
    add, total, _, done, ran = declare(broker, queue)
    inner = pipeline(
        [
            add.message(1, 1),
            group([add.message_with_options(args=(1,)), add.message_with_options(args=(2,))]),
            total.message_with_options(),
        ]
    )
    g = group([inner, add.message(5, 5)]).add_completion_callback(done.message("nested"))
    p = pipeline([g, total.message_with_options()])
    await p.run()
    assert await p.result(timeout=20) == 17
    assert await g.results(timeout=1) == [7, 10]
    await broker.join(queue, timeout=10)
    assert [r for r in ran if r[0] == "done"] == [("done", "nested")]


async def test_failure_stops_a_pipeline(broker: Broker, queue: str, worker: Worker) -> None:
    add, _, fail, done, ran = declare(broker, queue)
    g = group([add.message(1, 1), fail.message()]).add_completion_callback(done.message("no"))
    p = pipeline(
        [add.message(1, 1), fail.message_with_options(), add.message_with_options(args=(1,))]
    )
    await g.run()
    await p.run()
    with pytest.raises(ResultFailed, match="LookupError"):
        await p.result(timeout=10)
    with pytest.raises(ResultFailed, match="LookupError"):
        await g.results(timeout=10)
    await broker.join(queue, timeout=10)
    assert ("done", "no") not in ran
    assert [r for r in ran if r[0] == "add"] == [("add", (1, 1))] * 2  # nothing after the failure
