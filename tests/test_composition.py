"""Groups and pipelines through a real worker, on the MemoryBroker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
import pytest

import taskflow
from taskflow import Broker, BrokerUnavailable, ResultFailed, ResultTimeout, Worker, group, pipeline
from taskflow._flow import GroupNode, MessageNode, Runner, Tail
from taskflow.broker import Envelope
from taskflow.brokers.memory import MemoryBroker
from taskflow.errors import ResultsNotConfigured
from taskflow.middleware import Context, default_middleware
from taskflow.results.memory import MemoryResults

pytestmark = pytest.mark.anyio


class Pair(msgspec.Struct):
    a: int
    b: int


class App:
    """A broker with a few actors and a ledger of what ran."""

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker or MemoryBroker(results=True)
        self.ran: list[tuple[str, Any]] = []
        b = self.broker

        @b.actor
        async def add(x: int, y: int) -> int:
            self.ran.append(("add", (x, y)))
            return x + y

        @b.actor
        def total(xs: list[int]) -> int:
            self.ran.append(("total", xs))
            return sum(xs)

        @b.actor
        async def wrap(x: Any) -> list[Any]:
            return [x]

        @b.actor(max_retries=0)
        async def fail(*args: Any) -> None:
            self.ran.append(("fail", args))
            raise LookupError("no such thing")

        @b.actor
        async def done(tag: str) -> None:
            self.ran.append(("done", tag))

        self.add, self.total, self.wrap, self.fail, self.done = add, total, wrap, fail, done

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.ran if n == name)

    async def drain(self) -> None:
        async with Worker(self.broker):
            await self.broker.join("default", timeout=10)


async def test_design_examples_run_as_written() -> None:
    broker = MemoryBroker(results=True)

    @broker.actor(store_results=True)
    async def add(x: int, y: int) -> int:
        return x + y

    async with broker, Worker(broker):
        message = await add.send(1, 2)
        assert await message.result(timeout=5) == 3
        g = taskflow.group([add.message(1, 2), add.message(3, 4)])
        await g.run()
        assert await g.results(timeout=5) == [3, 7]
        p = taskflow.pipeline([add.message(1, 2), add.message_with_options(args=(10,))])
        await p.run()
        assert await p.result(timeout=5) == 13


async def test_pipeline_appends_each_result_as_the_last_argument() -> None:
    app = App()
    async with app.broker:
        p = pipeline(
            [
                app.add.message(1, 2),
                app.add.message_with_options(args=(10,)),
                app.add.message_with_options(args=(100,)),
            ]
        )
        assert len(p) == 3
        await p.run()
        await app.drain()
        assert await p.result(timeout=1) == 113
    assert app.ran == [("add", (1, 2)), ("add", (10, 3)), ("add", (100, 13))]


async def test_pipeline_result_is_converted_to_the_last_actor_annotation() -> None:
    broker = MemoryBroker(results=True)

    @broker.actor
    async def make(a: int) -> Pair:
        return Pair(a, a + 1)

    @broker.actor
    async def swap(p: Pair) -> Pair:
        return Pair(p.b, p.a)

    async with broker, Worker(broker):
        p = await pipeline([make.message(1), swap.message_with_options()]).run()
        assert await p.result(timeout=5) == Pair(2, 1)


async def test_pipe_ignore_skips_the_previous_result() -> None:
    app = App()
    async with app.broker:
        p = pipeline(
            [app.add.message(1, 2), app.add.message_with_options(args=(5, 5), pipe_ignore=True)]
        )
        await p.run()
        await app.drain()
        assert await p.result(timeout=1) == 10


async def test_group_results_in_order_and_completion_callback_once() -> None:
    app = App()
    async with app.broker:
        g = group([app.add.message(i, i) for i in range(10)])
        g.add_completion_callback(app.done.message("all ten"))
        await g.run()
        await app.drain()
        assert await g.results(timeout=1) == [2 * i for i in range(10)]
    assert app.count("add") == 10
    assert app.ran[-1] == ("done", "all ten")
    assert app.count("done") == 1


async def test_completion_callback_waits_for_the_slowest_member() -> None:
    app = App()
    release = anyio.Event()
    b = app.broker

    @b.actor
    async def slow() -> str:
        await release.wait()
        app.ran.append(("slow", None))
        return "slow"

    async with b, Worker(b):
        g = group([app.add.message(1, 1), slow.message()])
        await g.add_completion_callback(app.done.message("g")).run()
        with anyio.fail_after(5):
            while app.count("add") < 1:
                await anyio.sleep(0.01)
        with pytest.raises(ResultTimeout):
            await g.results(timeout=0.2)
        assert app.count("done") == 0
        release.set()
        assert await g.results(timeout=5) == [2, "slow"]
        await b.join("default", timeout=5)
    assert app.count("done") == 1


async def test_group_inside_a_pipeline_passes_the_list_of_results() -> None:
    app = App()
    async with app.broker:
        p = pipeline(
            [
                app.add.message(1, 1),
                group(
                    [
                        app.add.message_with_options(args=(10,)),
                        app.add.message_with_options(args=(20,)),
                        app.wrap.message_with_options(),
                    ]
                ),
                app.wrap.message_with_options(),
            ]
        )
        await p.run()
        await app.drain()
        # Each member of the group got 2 appended; the last step got the group's list.
        assert await p.result(timeout=1) == [[12, 22, [2]]]


async def test_pipeline_ending_in_a_group_returns_the_list() -> None:
    app = App()
    async with app.broker:
        p = pipeline(
            [
                app.add.message(1, 1),
                group(
                    [
                        app.add.message_with_options(args=(1,)),
                        app.add.message_with_options(args=(2,)),
                    ]
                ),
            ]
        )
        await p.run()
        await app.drain()
        assert await p.result(timeout=1) == [3, 4]


async def test_pipelines_inside_a_group() -> None:
    app = App()
    async with app.broker:
        g = group(
            [
                pipeline([app.add.message(1, 2), app.add.message_with_options(args=(3,))]),
                app.add.message(5, 5),
                pipeline(
                    [
                        app.add.message(0, 1),
                        app.add.message_with_options(args=(1,)),
                        app.add.message_with_options(args=(1,)),
                    ]
                ),
            ]
        )
        g.add_completion_callback(app.done.message("pipelines"))
        await g.run()
        await app.drain()
        assert await g.results(timeout=1) == [6, 10, 3]
    assert app.count("done") == 1
    # The callback ran after every step of every member pipeline.
    assert app.ran.index(("done", "pipelines")) == len(app.ran) - 1


async def test_deep_nesting() -> None:
    app = App()
    async with app.broker:
        inner = pipeline(
            [
                app.add.message(1, 1),
                group(
                    [
                        app.add.message_with_options(args=(1,)),
                        app.add.message_with_options(args=(2,)),
                    ]
                ),
                app.total.message_with_options(),
            ]
        )
        outer = group([inner, group([app.add.message(0, 7), app.add.message(0, 8)])])
        p = pipeline([outer, app.total.message_with_options(pipe_ignore=True, args=([100],))])
        outer.add_completion_callback(app.done.message("outer"))
        await p.run()
        await app.drain()
        assert await outer.results(timeout=1) == [7, [7, 8]]
        assert await inner.result(timeout=1) == 7
        assert await p.result(timeout=1) == 100
    assert app.count("done") == 1


async def test_empty_group_completes_at_once() -> None:
    app = App()
    async with app.broker:
        g = group([]).add_completion_callback(app.done.message("empty"))
        await g.run()
        p = pipeline([group([]), app.total.message_with_options()])
        await p.run()
        await app.drain()
        assert await g.results(timeout=1) == []
        assert await p.result(timeout=1) == 0
    assert app.count("done") == 1


async def test_failed_step_stops_the_pipeline_and_fails_its_result() -> None:
    app = App()
    async with app.broker:
        p = pipeline(
            [
                app.add.message(1, 1),
                app.fail.message(),
                app.add.message_with_options(args=(1,)),
                app.add.message_with_options(args=(2,)),
            ]
        )
        await p.run()
        await app.drain()
        with pytest.raises(ResultFailed) as info:
            await p.result(timeout=1)
    assert info.value.type_name == "LookupError"
    assert "no such thing" in info.value.message
    assert app.count("add") == 1  # the steps after the failure never ran


async def test_failed_member_fails_the_group_and_skips_its_callback() -> None:
    app = App()
    async with app.broker:
        g = group([app.add.message(1, 1), pipeline([app.add.message(1, 1), app.fail.message()])])
        g.add_completion_callback(app.done.message("never"))
        p = pipeline([g, app.total.message_with_options()])
        await p.run()
        await app.drain()
        with pytest.raises(ResultFailed, match="LookupError"):
            await g.results(timeout=1)
        with pytest.raises(ResultFailed, match="LookupError"):
            await p.result(timeout=1)
    assert app.count("done") == 0
    assert app.count("total") == 0


async def test_completion_is_counted_by_the_backend_not_the_process() -> None:
    # Two brokers sharing one result backend stand for two worker processes:
    # members run on different "processes" and the callback still runs once.
    backend = MemoryResults()
    one, two = App(MemoryBroker(results=backend)), App(MemoryBroker(results=backend))
    async with one.broker, two.broker:
        g = group([one.add.message(i, 1) for i in range(6)])
        g.add_completion_callback(one.done.message("shared"))
        node = g._compile(taskflow.composition._Compiler(), Tail(), nested=False)
        runner = Runner(one.broker)
        await runner.launch(node)
        # Half the members go to the second broker's queue.
        await one.broker.enqueue(runner.out[:3])
        await two.broker.enqueue(runner.out[3:])
        await two.drain()
        await one.drain()
        assert await g.results(timeout=1) == [i + 1 for i in range(6)]
    assert one.count("add") == 3 and two.count("add") == 3
    assert one.count("done") + two.count("done") == 1


async def test_a_member_that_runs_twice_is_counted_once() -> None:
    app = App()
    async with app.broker:
        first = app.add.message(1, 1)
        g = group([first, app.add.message(2, 2)])
        g.add_completion_callback(app.done.message("once"))
        node = g._compile(taskflow.composition._Compiler(), Tail(), nested=False)
        runner = Runner(app.broker)
        await runner.launch(node)
        # The first member is delivered twice (as after a crash before its ack).
        await app.broker.enqueue([runner.out[0]])
        await app.drain()
        await app.broker.enqueue([runner.out[0]])
        await app.drain()
        assert app.count("done") == 0  # two runs of one member are not two members
        await app.broker.enqueue(runner.out[1:])
        await app.drain()
    assert app.count("add") == 3
    assert app.count("done") == 1


async def test_redelivered_member_finishes_a_completion_whose_claimer_died() -> None:
    # The member that completed the group claimed the completion and died
    # before sending the callback: its redelivery sends it.
    backend = MemoryResults()
    app = App(MemoryBroker(results=backend))
    async with app.broker:
        g = group([app.add.message(1, 1)]).add_completion_callback(app.done.message("late"))
        node = g._compile(taskflow.composition._Compiler(), Tail(), nested=False)
        runner = Runner(app.broker)
        await runner.launch(node)
        [member] = runner.out
        await backend.incr(f"group:{g.id}:claim", 60)  # the claim of the worker that died
        await app.broker.enqueue([member])
        await app.drain()
        assert app.count("done") == 0  # a first delivery respects the claim
        redelivered = Runner(app.broker, rerun=True)
        await redelivered.succeed(Tail.of_options(member.options), 2, member.id)
        await redelivered.flush()
        await app.drain()
        assert app.count("done") == 1
        # Once done, a further redelivery sends nothing.
        again = Runner(app.broker, rerun=True)
        await again.succeed(Tail.of_options(member.options), 2, member.id)
        await again.flush()
        await app.drain()
    assert app.count("done") == 1


class FlakyBroker(MemoryBroker):
    """Refuses the first send that holds a message for ``done``."""

    refused = 0

    async def _enqueue(self, queue: str, envelopes: Sequence[Envelope]) -> None:
        if not self.refused and any(self.codec.decode(e.body).actor == "done" for e in envelopes):
            self.refused += 1
            raise BrokerUnavailable("the broker is down")
        await super()._enqueue(queue, envelopes)


async def test_completion_whose_send_failed_is_sent_when_the_member_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = FlakyBroker(results=True)
    app = App(broker)
    async with app.broker:
        g = group([app.add.message(1, 1), app.add.message(2, 2)])
        await g.add_completion_callback(app.done.message("after retry")).run()
        await app.drain()
        assert await g.results(timeout=1) == [2, 4]
    assert broker.refused == 1
    assert "could not send the next step" in caplog.text
    assert app.count("add") == 3  # the member that completed the group ran again
    assert app.count("done") == 1


async def test_composition_checks() -> None:
    app = App()
    m = app.add.message(1, 2)
    with pytest.raises(ValueError, match="twice"):
        await group([m, pipeline([m])]).run()
    with pytest.raises(ValueError, match="at least one"):
        pipeline([])
    with pytest.raises(TypeError, match="compose"):
        group([app.add])  # type: ignore[list-item]
    other = App()
    with pytest.raises(ValueError, match="one broker"):
        group([app.add.message(1, 1), other.add.message(1, 1)])
    async with app.broker:
        g = await group([app.add.message(1, 1)]).run()
        with pytest.raises(RuntimeError, match="already ran"):
            await g.run()
        await app.drain()

    no_results = App(MemoryBroker())
    async with no_results.broker:
        with pytest.raises(ResultsNotConfigured):
            await group([no_results.add.message(1, 1)]).results(timeout=1)
        with pytest.raises(ResultsNotConfigured):
            await (
                group([no_results.add.message(1, 1)])
                .add_completion_callback(no_results.done.message("x"))
                .run()
            )
        # A pipeline needs no results to run, only to be read.
        p = await pipeline(
            [no_results.add.message(1, 1), no_results.add.message_with_options(args=(1,))]
        ).run()
        await no_results.drain()
        assert no_results.ran == [("add", (1, 1)), ("add", (1, 2))]
        with pytest.raises(ResultsNotConfigured):
            await p.result(timeout=1)

    bare = App(
        MemoryBroker(
            results=True,
            middleware=[m for m in default_middleware() if type(m).__name__ != "Composition"],
        )
    )
    with pytest.raises(TypeError, match="Composition"):
        await pipeline([bare.add.message(1, 1)]).run()


async def test_group_member_results_are_readable_from_each_message() -> None:
    app = App()
    async with app.broker:
        members = [app.add.message(i, 0) for i in range(3)]
        await group(members).run()
        await app.drain()
        # Group members are sent with store_results=True, so each message has its result.
        assert [await m.result(timeout=1) for m in members] == [0, 1, 2]


async def test_context_option_sees_composition_options() -> None:
    seen: list[Any] = []
    broker = MemoryBroker(results=True)

    class Spy(taskflow.Middleware):
        async def process(self, ctx: Context, call_next: Any) -> Any:
            ignored = ("store_results", "result_ttl")
            seen.append(sorted(k for k in ctx.message.options if k not in ignored))
            return await call_next(ctx)

    broker.middleware = (Spy(), *broker.middleware)

    @broker.actor
    async def one(*args: int) -> int:
        return 1

    async with broker:
        await pipeline(
            [
                one.message(),
                group([one.message(), one.message()]).add_completion_callback(one.message()),
            ]
        ).run()
        async with Worker(broker):
            await broker.join("default", timeout=5)
    assert sorted(seen) == [[], ["group_ref"], ["group_ref"], ["pipe_target"]]


async def test_a_group_member_carries_the_same_few_bytes_whatever_the_group_size() -> None:
    app = App()

    def largest_member(size: int) -> int:
        g = group([app.add.message(i, 1) for i in range(size)])
        g.add_completion_callback(app.done.message("all"))
        node = g._compile(taskflow.composition._Compiler(), Tail(), nested=False)
        assert isinstance(node, GroupNode)
        bodies = [
            app.broker.codec.encode(msgspec.convert(member.message, taskflow.Message))
            for member in node.members
            if isinstance(member, MessageNode)
        ]
        return max(len(body) for body in bodies)

    small, large = largest_member(10), largest_member(5_000)
    assert large <= small + 8  # a few more digits in the position, not the group's ids
    assert large < 1_000


async def test_group_member_results_outlive_their_result_ttl_until_the_group_completes() -> None:
    broker = MemoryBroker(results=True)
    app = App(broker)

    @broker.actor(queue="late", result_ttl=0.2)
    async def late(x: int) -> int:
        return x

    @broker.actor(queue="early", result_ttl=0.2)
    async def early(x: int) -> int:
        return x

    async with broker:
        p = pipeline([group([early.message(1), late.message(2)]), app.total.message_with_options()])
        await p.run()
        # Given the first member done, and the other running long after its result_ttl
        async with Worker(broker, ["early"]):
            await broker.join("early", timeout=5)
        await anyio.sleep(0.4)
        async with Worker(broker, ["late", "default"]):
            await broker.join("late", timeout=5)
            # Expect the group to complete with both results
            assert await p.result(timeout=5) == 3


class TooLargeOnce(MemoryBroker):
    """Refuses, as too large, the first send that holds a message for ``done``."""

    refused = 0

    async def _enqueue(self, queue: str, envelopes: Sequence[Envelope]) -> None:
        if not self.refused and any(self.codec.decode(e.body).actor == "done" for e in envelopes):
            self.refused += 1
            raise taskflow.MessageTooLarge(10**9, self.max_message_size)
        await super()._enqueue(queue, envelopes)


async def test_a_completion_that_could_not_be_sent_is_sent_after_a_dead_letter_requeue() -> None:
    broker = TooLargeOnce(results=True)
    app = App(broker)
    async with broker:
        g = group([app.add.message(1, 1), app.add.message(2, 2)])
        await g.add_completion_callback(app.done.message("after requeue")).run()
        # Given the member that completed the group dead-lettered: its callback did not fit
        await app.drain()
        (letter,) = await broker.dead_letters("default")
        assert "could not send the next step" in letter.reason
        assert app.count("done") == 0
        # When it is requeued from the dead letters and runs again
        assert await broker.requeue_dead("default") == 1
        await app.drain()
    # Expect the completion sent then, once
    assert app.count("done") == 1
    assert await broker.dead_letters("default") == []


async def test_a_member_failing_when_run_again_keeps_its_success_and_its_group() -> None:
    app = App()
    runs = 0

    @app.broker.actor(max_retries=0)
    async def once(x: int) -> int:
        nonlocal runs
        runs += 1
        if runs > 1:
            raise RuntimeError("second run")
        return x

    async with app.broker:
        first = once.message(7)
        g = group([first, app.add.message(2, 2)])
        g.add_completion_callback(app.done.message("once"))
        node = g._compile(taskflow.composition._Compiler(), Tail(), nested=False)
        runner = Runner(app.broker)
        await runner.launch(node)
        member = runner.out[0]
        # Given a member that succeeded, then runs again (as a retry after its
        # follow-up could not be sent) and fails this time
        await app.broker.enqueue([member])
        await app.drain()
        await app.broker.enqueue([msgspec.structs.replace(member, retries=1)])
        await app.drain()
        await app.broker.enqueue(runner.out[1:])
        await app.drain()
        # Expect the first success to stand and the group to complete once
        assert runs == 2
        assert await first.result(timeout=1) == 7
        assert await g.results(timeout=1) == [7, 4]
    assert app.count("done") == 1
