"""Results and callbacks through a real worker, on the MemoryBroker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

import anyio
import msgspec
import pytest

import taskflow
from taskflow import Broker, BrokerUnavailable, ResultFailed, ResultTimeout, Worker
from taskflow.broker import Envelope
from taskflow.brokers.memory import MemoryBroker
from taskflow.errors import ResultsNotConfigured
from taskflow.results import ResultRecord
from taskflow.results.memory import MemoryResults

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {"min_backoff": 0.01, "max_backoff": 0.02}


class SpyResults(MemoryResults):
    """Memory results that remember every record stored."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: list[tuple[str, ResultRecord]] = []

    async def store(self, message_id: str, record: ResultRecord, ttl: float) -> None:
        self.stored.append((message_id, record))
        await super().store(message_id, record, ttl)


async def drain(broker: Broker, *queues: str) -> None:
    async with Worker(broker, list(queues) or ["default"]):
        for queue in queues or ("default",):
            await broker.join(queue, timeout=10)


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    label: str
    at: dt.datetime


async def _refused(broker: Broker, message: taskflow.Message[Any]) -> ResultFailed:
    """Run a worker over ``message`` and return how its result fails, waiting 30 s at most."""
    await broker.enqueue([message])
    async with Worker(broker):
        await broker.join("default", timeout=10)
    with anyio.fail_after(2), pytest.raises(ResultFailed) as failed:  # at once, not in 30 s
        await message.result(timeout=30)
    return failed.value


async def test_result_is_converted_to_the_return_annotation() -> None:
    broker = MemoryBroker(results=True)

    @broker.actor(store_results=True)
    async def point() -> Point:
        return Point(1, 2)

    @broker.actor(store_results=True)
    def box() -> Box:
        return Box("b", dt.datetime(2024, 5, 1, tzinfo=dt.UTC))

    @broker.actor(store_results=True)
    async def when() -> dt.datetime:
        return dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    async with broker, Worker(broker):
        p, b, w = await point.send(), await box.send(), await when.send()
        assert await p.result(timeout=5) == Point(1, 2)
        assert await b.result(timeout=5) == Box("b", dt.datetime(2024, 5, 1, tzinfo=dt.UTC))
        assert await w.result(timeout=5) == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


async def test_failure_raises_result_failed_with_remote_type_message_and_traceback() -> None:
    broker = MemoryBroker(results=True)

    class PaymentDeclined(Exception):
        pass

    @broker.actor(store_results=True, max_retries=0)
    async def charge(amount: int) -> int:
        raise PaymentDeclined(f"card refused for {amount}")

    async with broker, Worker(broker):
        message = await charge.send(12)
        with pytest.raises(ResultFailed) as info:
            await message.result(timeout=5)
    error = info.value
    assert not isinstance(error, PaymentDeclined)
    assert error.type_name == "PaymentDeclined"
    assert error.message == "card refused for 12"
    assert "raise PaymentDeclined" in error.traceback
    assert "in charge" in error.traceback
    assert str(error) == "PaymentDeclined: card refused for 12"


async def test_result_timeout_when_nothing_arrives() -> None:
    broker = MemoryBroker(results=True)

    @broker.actor(store_results=True)
    async def never_run() -> int:
        return 1

    async with broker:
        message = await never_run.send()
        start = time.monotonic()
        with pytest.raises(ResultTimeout):
            await message.result(timeout=dt.timedelta(seconds=0.2))
        assert 0.15 <= time.monotonic() - start < 2


async def test_result_waiter_started_before_the_worker_wakes_on_completion() -> None:
    broker = MemoryBroker(results=True)

    @broker.actor(store_results=True)
    async def add(x: int, y: int) -> int:
        return x + y

    async with broker:
        message = await add.send(2, 3)
        got: list[int] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    got.append(await message.result(timeout=None))

                tg.start_soon(wait)
                async with Worker(broker):
                    await broker.join("default", timeout=5)
        assert got == [5]


async def test_only_the_final_outcome_is_stored() -> None:
    backend = SpyResults()
    broker = MemoryBroker(results=backend)
    attempts: list[int] = []

    @broker.actor(store_results=True, max_retries=3, **FAST)
    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return "done"

    @broker.actor(store_results=True, max_retries=2, **FAST)
    async def doomed() -> None:
        raise RuntimeError("never")

    async with broker:
        ok = await flaky.send()
        bad = await doomed.send()
        await drain(broker)
        assert len(attempts) == 3
        assert await ok.result(timeout=1) == "done"
        with pytest.raises(ResultFailed, match="never"):
            await bad.result(timeout=1)
    # One record per message, written once its outcome was final.
    assert sorted((i, r.ok) for i, r in backend.stored) == sorted([(ok.id, True), (bad.id, False)])


async def test_a_backend_outage_retries_the_message_instead_of_dead_lettering_it() -> None:
    class Flaky(SpyResults):
        async def _put(self, key: str, data: bytes, ttl: float) -> None:
            if len(self.stored) == 1:
                raise BrokerUnavailable("results are down")
            await super()._put(key, data, ttl)

    backend = Flaky()
    broker = MemoryBroker(results=backend)
    runs: list[int] = []

    @broker.actor(store_results=True)
    async def job() -> str:
        runs.append(1)
        return "kept"

    async with broker:
        message = await job.send()
        await drain(broker)
        assert await message.result(timeout=1) == "kept"
        assert (await broker.stats("default")).dead == 0
    assert len(runs) == 2


async def test_a_value_that_cannot_be_encoded_is_a_failure() -> None:
    broker = MemoryBroker(results=True)

    @broker.actor(store_results=True)
    async def opaque() -> Any:
        return object()

    async with broker:
        message = await opaque.send()
        await drain(broker)
        with pytest.raises(ResultFailed) as info:
            await message.result(timeout=1)
        [dead] = await broker.dead_letters("default")
    assert info.value.type_name == "TypeError"
    assert dead.id == message.id
    assert dead.reason.startswith("failed: could not send its result: TypeError")


async def test_results_are_opt_in_per_actor_or_per_message() -> None:
    backend = SpyResults()
    broker = MemoryBroker(results=backend)

    @broker.actor
    async def plain(x: int) -> int:
        return x

    async with broker:
        unstored = await plain.send(1)
        stored = await plain.send_with_options(args=(2,), store_results=True)
        await drain(broker)
        assert await stored.result(timeout=1) == 2
        with pytest.raises(ResultTimeout):
            await unstored.result(timeout=0.1)
    assert [i for i, _ in backend.stored] == [stored.id]


async def test_result_ttl_expires_the_result() -> None:
    broker = MemoryBroker(results=True)

    @broker.actor(store_results=True, result_ttl=0.3)
    async def short() -> int:
        return 1

    @broker.actor(store_results=True)
    async def default_ttl() -> int:
        return 2

    async with broker:
        a, b = await short.send(), await default_ttl.send()
        await drain(broker)
        assert await a.result(timeout=0) == 1
        with anyio.fail_after(5):
            while True:
                try:
                    await a.result(timeout=0)
                except ResultTimeout:
                    break
                await anyio.sleep(0.05)
        assert await b.result(timeout=0) == 2


async def test_result_without_a_backend_raises_results_not_configured() -> None:
    broker = MemoryBroker()

    @broker.actor
    async def job() -> int:
        return 1

    async with broker:
        message = await job.send()
        with pytest.raises(ResultsNotConfigured):
            await message.result(timeout=1)
    with pytest.raises(TypeError, match="store_results"):

        @broker.actor(store_results=True)
        async def stored() -> int:
            return 1


async def test_actor_called_in_process_returns_directly() -> None:
    broker = MemoryBroker(results=True)

    @broker.actor(store_results=True)
    async def add(x: int, y: int) -> int:
        return x + y

    assert await add(1, 2) == 3


async def test_a_message_for_an_unknown_actor_fails_its_result_at_once() -> None:
    broker = MemoryBroker(results=True)

    @broker.actor(store_results=True)
    async def known() -> int:
        return 1

    ghost = msgspec.structs.replace(known.message(), actor="ghost").bind(broker)
    failed = await _refused(broker, ghost)
    assert failed.type_name == "ActorNotFound"
    assert failed.message == "unknown_actor: ghost"


async def test_arguments_that_do_not_fit_fail_the_result_at_once() -> None:
    broker = MemoryBroker(results=True)

    @broker.actor(store_results=True)
    async def double(x: int) -> int:
        return 2 * x

    wrong = msgspec.structs.replace(double.message(1), args=("two",)).bind(broker)
    failed = await _refused(broker, wrong)
    assert failed.type_name == "InvalidArguments"
    assert failed.message.startswith("invalid_arguments: ")


async def test_bodies_refused_by_the_broker_fail_their_results_at_once() -> None:
    broker = MemoryBroker(results=True, max_deliveries=1)

    @broker.actor(store_results=True)
    async def work() -> int:
        return 1

    async with broker:
        # Given a message past its delivery limit and a body that does not decode
        over = await work.send()
        async for delivery in broker.consume("default"):
            await delivery.requeue()  # a delivery counted, as after a crash
            break
        await broker._enqueue("default", [Envelope("01BADBODY0000000000000000", b"{nope", 0, 0.0)])
        async with Worker(broker):
            await broker.join("default", timeout=10)
        # Expect each failed at once, with the reason
        with anyio.fail_after(2), pytest.raises(ResultFailed) as failed:
            await over.result(timeout=30)
        assert failed.value.type_name == "DeliveryLimitExceeded"
        assert broker.results is not None
        record = await broker.results.fetch("01BADBODY0000000000000000", 0)
        assert (record.ok, record.error_type) == (False, "DecodeError")


async def test_each_broker_converts_its_own_results_from_a_shared_backend() -> None:
    backend = MemoryResults()
    dates, texts = MemoryBroker(results=backend), MemoryBroker(results=backend)

    @dates.actor(name="when", store_results=True)
    async def when_date() -> dt.date:
        return dt.date(2026, 12, 1)

    @texts.actor(name="when", store_results=True)
    async def when_text() -> str:
        return "2026-12-01"

    as_date, as_text = await when_date.send(), await when_text.send()
    await drain(dates)
    await drain(texts)
    assert await as_date.result(timeout=1) == dt.date(2026, 12, 1)
    assert await as_text.result(timeout=1) == "2026-12-01"
