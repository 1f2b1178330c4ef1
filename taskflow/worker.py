"""The worker: consumers, bounded concurrency, thread offload and graceful shutdown.

One anyio task group holds everything. A consumer task per queue pulls
deliveries from the broker and hands them, one at a time, to a fixed set of
``concurrency`` processor tasks through an unbuffered hand-off (:class:`_Handoff`),
so at most ``concurrency`` messages run at once and a consumer fetches only
when a processor is free to take its next message. Async actors run on the loop;
sync actors run in a thread pool of ``threads`` threads (:mod:`taskflow._threads`):
a sync message takes a thread slot before it runs, the consumer of a queue of
sync actors only fetches when a slot is free, and the time limit of a sync call
counts from when its thread starts it.

Settling: middleware only mark what should happen to a message, through
its context (``ctx.retry``, ``ctx.dead_letter``, ``ctx.requeue``,
``ctx.defer``); :meth:`Worker._settle` alone acks, retries, requeues,
defers or dead-letters, once the stack has returned or raised. Messages
refused before they reach the stack (an unknown actor, arguments that do not
fit) and prefetched ones handed back on shutdown go through it too.

Shutdown (``stop()``): consumers stop fetching and hand back what they
prefetched, and sync messages still waiting for a thread go back; running messages get ``shutdown_timeout`` seconds to finish; then
the rest are cancelled (sync actors get ``WorkerShutdown`` raised in their
thread) and requeued, neither dead-lettered nor counted as a retry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Self

import anyio
from anyio.abc import TaskStatus

from taskflow._inspection import WorkerRecord, encode_record, local_identity
from taskflow._redact import redact
from taskflow._threads import STUCK_GRACE, THREAD_LIMITS, ThreadCall, ThreadPool
from taskflow.cancellation import CancelWatch
from taskflow.errors import BrokerError, Cancelled, InvalidArguments, LeaseLost, WorkerShutdown
from taskflow.middleware import Context, Middleware, Outcome, build_stack
from taskflow.middleware._shared import describe
from taskflow.results import store_refusal
from taskflow.scheduling import run_schedules
from taskflow.unique import release_unique

if TYPE_CHECKING:
    from types import TracebackType

    from taskflow.broker import Broker, Delivery

__all__ = ["HAND_BACK_TIMEOUT", "Worker", "WorkerShutdown"]

logger = logging.getLogger("taskflow.worker")

#: Outcomes after which a message does not run again.
_FINAL = frozenset({Outcome.ACK, Outcome.DEAD})

#: Seconds a stopping consumer may take to hand back its prefetched messages.
HAND_BACK_TIMEOUT = 10.0


class _Handoff:
    """Unbuffered hand-over of deliveries from consumers to idle processors.

    A processor that is free waits on a future of its own in ``_idle``; a
    consumer hands a delivery to the first such future, or waits until a
    processor is free. Nothing is ever queued in between. This is the
    rendezvous an unbuffered anyio memory stream gives, for one future per
    message instead of an event, a checkpoint and backend look-ups.
    """

    __slots__ = ("_closed", "_free", "_idle")

    def __init__(self) -> None:
        self._idle: deque[asyncio.Future[Delivery | None]] = deque()
        self._free: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def offer(self, delivery: Delivery) -> bool:
        """Hand ``delivery`` to an idle processor; False when none is waiting."""
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(delivery)
                return True
        return False

    async def put(self, delivery: Delivery) -> None:
        """Hand ``delivery`` over, waiting until a processor is free."""
        while not self.offer(delivery):
            free = asyncio.get_running_loop().create_future()
            self._free.append(free)
            try:
                await free
            finally:
                if not free.done():
                    free.cancel()

    async def take(self) -> Delivery | None:
        """Wait for the next delivery; ``None`` once closed.

        Raises:
            asyncio.CancelledError: Cancelled; a delivery handed over at that
                very moment is in the exception's ``delivery`` attribute.
        """
        if self._closed:
            return None
        waiter: asyncio.Future[Delivery | None] = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        while self._free:
            free = self._free.popleft()
            if not free.done():
                free.set_result(None)
                break
        try:
            return await waiter
        except asyncio.CancelledError as exc:
            if waiter.done() and not waiter.cancelled():
                exc.delivery = waiter.result()  # type: ignore[attr-defined]
            raise

    def close(self) -> None:
        """Wake every idle processor with ``None``; later takes return ``None`` at once."""
        self._closed = True
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)


class Worker:
    """Processes messages from a broker's queues inside the running event loop.

    Args:
        broker: The broker whose actors to run.
        queues: Queues to consume; default: the queues of all declared actors.
        concurrency: Most messages in flight at once in this process.
        threads: Threads for sync actors.
        prefetch: Messages a consumer fetches per round trip (default: up to
            ``concurrency``, at most 256).
        shutdown_timeout: Seconds running messages get to finish on ``stop()``.
        heartbeat: Seconds between the worker's registrations with the broker
            (see :meth:`taskflow.Broker.workers`); a record lives two heartbeats.

    Attributes:
        processed: Messages acked as done since start.
        failed: Messages that raised (retried or dead-lettered) since start.
    """

    def __init__(
        self,
        broker: Broker,
        queues: Sequence[str] | None = None,
        *,
        concurrency: int = 100,
        threads: int = 8,
        prefetch: int | None = None,
        shutdown_timeout: float = 30.0,
        heartbeat: float = 5.0,
    ) -> None:
        if concurrency < 1 or threads < 1:
            raise ValueError("concurrency and threads must be at least 1")
        self.broker = broker
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.threads = threads
        self.prefetch = prefetch or min(concurrency, 256)
        self.shutdown_timeout = shutdown_timeout
        self.heartbeat = heartbeat
        self.started_at = time.time()
        self.worker_id = f"{os.getpid()}-{id(self):x}"
        self.processed = 0
        self.failed = 0
        self._stop_requested = False
        self._stopping: anyio.Event | None = None
        self._pool: ThreadPool | None = None
        self._slot_waits: set[anyio.CancelScope] = set()
        self._prepaid: set[Delivery] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._busy = 0
        self._idle: anyio.Event | None = None
        self._stack = build_stack(broker.middleware, self._call_actor)
        self._cancels = CancelWatch(broker)
        self._settled_hooks = tuple(
            m for m in broker.middleware if type(m).after_settle is not Middleware.after_settle
        )

    @property
    def stuck_threads(self) -> int:
        """Sync actor calls given up as stuck (still running past their time limit and a grace).

        Their messages failed with ``TimeLimitExceeded``; their threads are
        abandoned. ``taskflow worker`` replaces a process where this is not 0.
        """
        return 0 if self._pool is None else self._pool.stuck

    # -- lifecycle ----------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to shut down gracefully; ``run()`` returns when it has."""
        self._stop_requested = True
        if self._stopping is not None:
            self._stopping.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` is called or the task is cancelled."""
        self._stopping = anyio.Event()
        if self._stop_requested:
            self._stopping.set()
        self._pool = ThreadPool(self.threads)
        await self.broker.connect()
        queues = self.queues or self.broker.queues or ["default"]
        for m in self.broker.middleware:
            await m.on_startup(self)
        logger.info(
            "worker %s consuming %s (concurrency %d, threads %d)",
            self.worker_id,
            ", ".join(queues),
            self.concurrency,
            self.threads,
        )
        try:
            await self._serve(queues, task_status)
        finally:
            await self._shutdown_middleware()
            logger.info("worker %s stopped", self.worker_id)

    async def _serve(self, queues: list[str], task_status: TaskStatus[None]) -> None:
        assert self._stopping is not None
        handoff = _Handoff()
        await self._cancels.poll()  # what was cancelled before this worker started
        async with anyio.create_task_group() as processors:
            for _ in range(self.concurrency):
                processors.start_soon(self._process_loop, handoff)
            async with anyio.create_task_group() as consumers:
                for queue in queues:
                    consumers.start_soon(self._consume, queue, handoff)
                consumers.start_soon(run_schedules, self.broker)
                consumers.start_soon(self._cancels.run)
                await self._register(queues)
                consumers.start_soon(self._heartbeats, queues)
                task_status.started()
                await self._stopping.wait()
                consumers.cancel_scope.cancel()
            handoff.close()
            await self._unregister()
            # Messages waiting for a thread have not started: they go back now.
            for waiting in list(self._slot_waits):
                waiting.cancel()
            # Consumers are gone and the hand-off is closed: processors finish
            # what they run, then leave their loops.
            with anyio.move_on_after(self.shutdown_timeout) as grace:
                await self._wait_idle()
            if grace.cancelled_caught:
                logger.warning(
                    "worker %s: shutdown timeout of %.1f s passed; requeueing running messages",
                    self.worker_id,
                    self.shutdown_timeout,
                )
                assert self._pool is not None
                self._pool.interrupt_all(WorkerShutdown)
                processors.cancel_scope.cancel()

    async def _register(self, queues: list[str]) -> None:
        """Write this worker's record to the broker's registry (one heartbeat)."""
        host, pid = local_identity()
        record = WorkerRecord(
            id=self.worker_id,
            host=host,
            pid=pid,
            queues=queues,
            concurrency=self.concurrency,
            started_at=self.started_at,
            last_heartbeat=time.time(),
            in_progress=self._busy,
            processed=self.processed,
        )
        try:
            await self.broker._register_worker(
                self.worker_id, encode_record(record), 2 * self.heartbeat
            )
        except BrokerError as exc:
            logger.warning("worker %s: heartbeat not recorded (%s)", self.worker_id, exc)

    async def _heartbeats(self, queues: list[str]) -> None:
        while True:
            await anyio.sleep(self.heartbeat)
            await self._register(queues)

    async def _unregister(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            try:
                await self.broker._unregister_worker(self.worker_id)
            except BrokerError as exc:
                logger.warning("worker %s: could not unregister (%s)", self.worker_id, exc)

    async def _wait_idle(self) -> None:
        assert self._stopping is not None
        self._idle = anyio.Event()
        if self._busy == 0:
            return
        await self._idle.wait()

    async def _shutdown_middleware(self) -> None:
        with anyio.CancelScope(shield=True):
            for m in reversed(self.broker.middleware):
                try:
                    await m.on_shutdown(self)
                except Exception:
                    logger.exception("middleware %s failed on shutdown", type(m).__name__)

    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self._run_then_release)
        return self

    async def _run_then_release(self, *, task_status: TaskStatus[None]) -> None:
        await self.run(task_status=task_status)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.stop()
        assert self._tg is not None
        return await self._tg.__aexit__(exc_type, exc, tb)

    # -- consuming ----------------------------------------------------------

    async def _consume(self, queue: str, handoff: _Handoff) -> None:
        sync_only = self._sync_only(queue)
        prefetch = min(self.prefetch, self.threads) if sync_only else self.prefetch
        while True:
            deliveries = self.broker.consume(queue, prefetch=prefetch)
            try:
                if sync_only:
                    await self._feed_threads(deliveries, handoff)
                else:
                    await self._feed(deliveries, handoff)
                return
            except BrokerError as exc:
                # Transports reconnect by themselves; this is the last line of defence.
                logger.error("consumer of %s failed (%s); restarting it in 1 s", queue, exc)
                await anyio.sleep(1.0)
            finally:
                # Hand back what the consumer prefetched now, even when cancelled,
                # rather than whenever the abandoned generator is collected.
                with anyio.move_on_after(HAND_BACK_TIMEOUT, shield=True):
                    await deliveries.aclose()

    async def _feed(self, deliveries: AsyncIterator[Delivery], handoff: _Handoff) -> None:
        async for delivery in deliveries:
            # Hand over without a loop round trip when a processor waits.
            if not handoff.offer(delivery):
                await self._send_or_requeue(handoff, delivery)

    async def _feed_threads(self, deliveries: AsyncIterator[Delivery], handoff: _Handoff) -> None:
        """Fetch each message of a queue of sync actors only once a thread is free for it.

        The slot taken goes with the delivery (``_prepaid``) to the processor,
        so a worker leases no more sync work than it has threads to run.
        """
        assert self._pool is not None
        while True:
            await self._pool.take()
            try:
                delivery = await anext(deliveries)
            except BaseException:  # the end of the iterator, a broker error, a cancellation
                self._pool.give()
                raise
            self._prepaid.add(delivery)
            if not handoff.offer(delivery):
                await self._send_or_requeue(handoff, delivery)

    def _sync_only(self, queue: str) -> bool:
        """Whether every actor declared on ``queue`` is sync (and there is one)."""
        kinds = {actor.is_async for actor in self.broker.actors.values() if actor.queue == queue}
        return kinds == {False}

    async def _send_or_requeue(self, handoff: _Handoff, delivery: Delivery) -> None:
        try:
            await handoff.put(delivery)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                self._release_slot(delivery)
                await self._settle(delivery, Outcome.REQUEUE)
            raise

    def _release_slot(self, delivery: Delivery) -> None:
        """Give back the thread slot taken for ``delivery``, if one was."""
        if delivery in self._prepaid:
            self._prepaid.discard(delivery)
            assert self._pool is not None
            self._pool.give()

    async def _process_loop(self, handoff: _Handoff) -> None:
        while True:
            try:
                delivery = await handoff.take()
            except asyncio.CancelledError as exc:
                handed: Delivery | None = getattr(exc, "delivery", None)
                if handed is not None:
                    with anyio.CancelScope(shield=True):
                        self._release_slot(handed)
                        await self._settle(handed, Outcome.REQUEUE)
                raise
            if delivery is None:
                return
            self._busy += 1
            try:
                await self._handle(delivery)
            finally:
                self._busy -= 1
                if self._busy == 0 and self._idle is not None:
                    self._idle.set()

    # -- processing: lookup → convert → run the stack → settle --------------

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self._process(delivery)
        finally:
            self._release_slot(delivery)

    async def _take_thread(self, delivery: Delivery) -> bool:
        """Wait for a thread slot for a sync actor's message; False when stopped first.

        Waiting counts as not started: a graceful stop cancels the wait and
        the message goes back to its queue at once.
        """
        if delivery in self._prepaid:
            return True
        assert self._pool is not None
        with anyio.CancelScope() as waiting:
            self._slot_waits.add(waiting)
            try:
                await self._pool.take()
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._settle(delivery, Outcome.REQUEUE)
                raise
            finally:
                self._slot_waits.discard(waiting)
            self._prepaid.add(delivery)
            return True
        with anyio.CancelScope(shield=True):
            await self._settle(delivery, Outcome.REQUEUE)
        return False

    async def _process(self, delivery: Delivery) -> None:
        ctx = self._context(delivery)
        if isinstance(ctx, str):
            await self._refuse(delivery, ctx)
            return
        if not ctx.actor.is_async and not await self._take_thread(delivery):
            return
        if not await delivery.start():
            return  # its lease was taken back: it runs elsewhere
        try:
            ctx.result = await self._stack(ctx)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                ctx.requeue()
                await self._finish(ctx)
            raise
        except Exception as exc:
            self.failed += 1
            ctx.error = exc
            if not ctx.decided:
                message = ctx.message
                logger.error(
                    "message %s for %s on %s failed",
                    message.id,
                    ctx.actor.name,
                    message.queue,
                    exc_info=True,
                )
                cancelled = isinstance(exc, Cancelled)
                ctx.dead_letter("cancelled" if cancelled else f"failed: {describe(exc)}")
        await self._finish(ctx)

    def _context(self, delivery: Delivery) -> Context | str:
        """Look the actor up and convert the arguments; the refusal's reason if either fails."""
        message = delivery.message
        actor = self.broker.get_actor(message.actor)
        if actor is None:
            logger.warning(
                "message %s on %s names unknown actor %.100r; dead-lettering",
                message.id,
                message.queue,
                message.actor,
            )
            return f"unknown_actor: {message.actor[:100]}"
        try:
            args, kwargs = actor.params.convert(message.args, message.kwargs)
        except InvalidArguments as exc:
            logger.warning(
                "message %s for %s on %s has invalid arguments; dead-lettering",
                message.id,
                actor.name,
                message.queue,
            )
            return f"invalid_arguments: {redact(str(exc))}"[:500]
        return Context(self, delivery, actor, args, kwargs)

    def _finish(self, ctx: Context) -> Awaitable[None]:
        """Settle a message that went through the stack, as its context marks it.

        A plain function returning the settler's coroutine: one coroutine
        frame less per message.
        """
        if ctx.outcome is Outcome.PENDING:
            ctx.outcome = Outcome.ACK
            self.processed += 1
        return self._settle(ctx.delivery, ctx.outcome, ctx.reason, ctx.delay)

    async def _call_actor(self, ctx: Context) -> Any:
        actor, message_id = ctx.actor, ctx.message.id
        self._cancels.check(message_id)
        if self._cancels.lookups:
            await self._cancels.look_up(message_id)
        if actor.is_async:
            return await self._cancels.run_async(message_id, actor.fn(*ctx.args, **ctx.kwargs))
        assert self._pool is not None
        call = ThreadCall(actor.fn, ctx.args, ctx.kwargs)
        limit, grace = ctx.state.get(THREAD_LIMITS, (None, STUCK_GRACE))
        ctx.interrupt = call.interrupt
        running = self._pool.run(call, actor.name, limit, grace)
        try:
            return await self._cancels.run_thread(message_id, call.interrupt, running)
        finally:
            ctx.interrupt = None

    async def _refuse(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter a message that cannot run, and store why for whoever waits on it."""
        await self._settle(delivery, Outcome.DEAD, reason)
        await store_refusal(self.broker.results, delivery.message.id, reason)

    async def _settle(
        self, delivery: Delivery, outcome: Outcome, reason: str = "", delay: float = 0.0
    ) -> None:
        """Carry out ``outcome``: the one place where a worker settles a message.

        A lost lease or connection is logged, never raised: the broker
        redelivers the message.
        """
        try:
            if outcome is Outcome.ACK:
                await delivery.ack()
            elif outcome is Outcome.RETRY:
                await delivery.retry(delay)
            elif outcome is Outcome.DEAD:
                await delivery.nack(reason)
            elif outcome is Outcome.DEFER:
                await delivery.defer(delay)
            else:
                await delivery.requeue()
        except LeaseLost as exc:
            logger.warning("lease_lost: %s", exc)
        except BrokerError as exc:
            logger.warning("could not settle a message (%s); it will be redelivered", exc)
        else:
            if delivery.message.options and outcome in _FINAL:
                await self._release_unique(delivery)
            if self._settled_hooks:
                await self._after_settle(delivery, outcome, reason)

    async def _release_unique(self, delivery: Delivery) -> None:
        """A unique message finished for good: its key goes after its ``unique_ttl``."""
        if "unique_key" not in delivery.message.options:
            return
        try:
            await release_unique(self.broker, delivery.message)
        except BrokerError as exc:
            logger.warning("could not release a unique key (%s); it expires by itself", exc)

    async def _after_settle(self, delivery: Delivery, outcome: Outcome, reason: str) -> None:
        for m in self._settled_hooks:
            try:
                await m.after_settle(self, delivery, outcome, reason)
            except Exception:
                logger.exception("middleware %s failed after settling", type(m).__name__)
