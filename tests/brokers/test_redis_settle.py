"""Settling on Redis when a call's reply, or the call itself, is lost on the wire.

A small TCP proxy between the broker and the test Redis drops either the
next request (it never reaches Redis) or the next reply (Redis applied the
call, the client never hears of it), then resets the connection. The broker
repeats the call; it must tell the two apart: its own applied work is not a
lost lease, and a lease really lost meanwhile is not success.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest
import redis

from taskflow import LeaseLost
from taskflow.brokers.redis import RedisBroker, _scripts
from tests.apps.redis_app import delete_namespace

pytestmark = pytest.mark.anyio


class Proxy:
    """Forwards TCP to Redis; ``mode`` drops the next request or reply and resets."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode = "pass"  # or "drop-request", "drop-reply"
        self.dropped: list[str] = []
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._links:
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        pipes = [
            asyncio.ensure_future(self._pipe(client_r, server_w, "drop-request", client_w)),
            asyncio.ensure_future(self._pipe(server_r, client_w, "drop-reply", client_w)),
        ]
        self._links.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
        for writer in (client_w, server_w):
            writer.transport.abort()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        drop: str,
        client: asyncio.StreamWriter,
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if self.mode == drop:
                    self.mode = "pass"
                    self.dropped.append(drop)
                    return  # the link is reset; the data never arrives
                writer.write(data)
                await writer.drain()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[Proxy]:
    parts = urlsplit(redis_url)
    p = Proxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await p.start()
    yield p
    await p.close()


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    name = f"tf-test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_namespace(redis_url, name)


def through(proxy: Proxy, redis_url: str, namespace: str) -> RedisBroker:
    db = urlsplit(redis_url).path
    return RedisBroker(f"redis://127.0.0.1:{proxy.port}{db}", namespace=namespace)


async def test_a_settle_whose_reply_was_lost_is_not_a_lost_lease(
    proxy: Proxy, redis_url: str, namespace: str
) -> None:
    broker = through(proxy, redis_url, namespace)

    @broker.actor(queue="q")
    async def work() -> None:
        pass

    async with broker:
        await work.send_many([()] * 2)
        q = broker._queue("q")
        _, (acked, retried) = await broker._fetch(q, 2)
        # Given: Redis applies each call, but its reply is lost and the link reset.
        proxy.mode = "drop-reply"
        await acked.ack()
        proxy.mode = "drop-reply"
        await retried.retry(retried.body, 30.0)
        # Expect: the repeats got the applied calls' answers: no LeaseLost.
        assert proxy.dropped == ["drop-reply", "drop-reply"]
        assert await broker.stats("q") == (0, 1, 0, 0)


async def test_a_settle_that_never_arrived_reports_the_lease_lost_meanwhile(
    proxy: Proxy, redis_url: str, namespace: str
) -> None:
    broker = through(proxy, redis_url, namespace)

    @broker.actor(queue="q")
    async def work() -> None:
        pass

    admin = redis.Redis.from_url(redis_url)
    async with broker:
        await work.send()
        q = broker._queue("q")
        _, [receipt] = await broker._fetch(q, 1)
        # Given: the lease ran out and the reaper took the message back...
        keys = broker._keys.queue("q")
        admin.zadd(keys[2], {receipt.message_id: 0})
        reaped = admin.register_script(_scripts.MAINTAIN)(keys=keys, args=[60_000, 100])
        assert reaped == [0, 1, 0]
        # ... and the ack's first attempt never reaches Redis.
        proxy.mode = "drop-request"
        # Expect: the repeat finds the message back in the queue, and says so.
        with pytest.raises(LeaseLost, match="went back to the queue"):
            await receipt.ack()
        assert proxy.dropped == ["drop-request"]
        assert await broker.stats("q") == (1, 0, 0, 0)
    admin.close()


async def test_requeue_dead_by_id_puts_each_message_in_ready_once(
    redis_url: str, namespace: str
) -> None:
    broker = RedisBroker(redis_url, namespace=namespace)

    @broker.actor(queue="q")
    async def work() -> None:
        pass

    async with broker:
        [a, b] = await work.send_many([()] * 2)
        q = broker._queue("q")
        _, receipts = await broker._fetch(q, 2)
        for r in receipts:
            await r.dead_letter("test")
        assert await broker.stats("q") == (0, 0, 0, 2)
        # The same id twice (a CLI user pasting a list), and the other once.
        assert await broker.requeue_dead("q", [a.id, a.id, b.id]) == 2
        assert await broker.stats("q") == (2, 0, 0, 0)
        _, fetched = await broker._fetch(q, 10)
        assert sorted(r.message_id for r in fetched) == sorted([a.id, b.id])
