"""RedisResults on the Redis transport's connection code, and the broker's connection pool.

Each test runs a private ``redis-server`` (a 63xx port) that it may stop,
freeze or serve over TLS; the shared server on 6379 is only a broker's.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from taskflow import BrokerUnavailable, Worker
from taskflow.brokers.redis import RedisBroker
from taskflow.results import RedisResults, ResultRecord
from tests.apps.redis_app import RedisServer, delete_namespace, make_certificates
from tests.cli.procs import proc_status

pytestmark = pytest.mark.anyio


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path)
    s.start()
    yield s
    s.stop()


def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and wait (at most 2 s) until the kernel shows it stopped."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 2
    while not proc_status(pid).get("State", "").startswith("T"):
        assert time.monotonic() < deadline, "the process did not stop"
        time.sleep(0.005)


# -- item: results=True connects as the broker does ------------------------------


async def test_results_true_reaches_the_store_with_the_brokers_tls_options(
    tmp_path: Path,
) -> None:
    certificates = make_certificates(tmp_path)
    server = RedisServer(tmp_path, tls=certificates)
    server.start()
    try:
        broker = RedisBroker(
            f"rediss://localhost:{server.port}/0",
            redis_options={"ssl_ca_certs": str(certificates["ca"])},
            socket_timeout=3.0,
            results=True,
        )

        @broker.actor(queue="q", store_results=True)
        async def double(x: int) -> int:
            return 2 * x

        async with broker, Worker(broker, ["q"], concurrency=2):
            message = await double.send(21)
            assert await message.result(timeout=10) == 42
        assert isinstance(broker.results, RedisResults)
        kwargs = broker.results.client.connection_pool.connection_kwargs
        assert kwargs["ssl_ca_certs"] == str(certificates["ca"])
        assert kwargs["socket_timeout"] == 3.0
    finally:
        server.stop()


# -- item: results calls are bounded, and an outage retries the storing ----------


async def test_a_frozen_results_server_fails_a_call_within_its_timeout(
    server: RedisServer,
) -> None:
    backend = RedisResults(server.url, socket_timeout=0.3, retry_timeout=1.0)
    assert server.process is not None
    await backend.store("k", ResultRecord(ok=True, value=1), 60)
    freeze(server.process.pid)  # no RST, no answer: only timeouts help
    try:
        start = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="within 1.0 s"):
            await backend.store("k", ResultRecord(ok=True, value=2), 60)
        elapsed = time.monotonic() - start
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        await backend.close()
    assert 1.0 <= elapsed < 2.0, elapsed


async def test_a_results_outage_retries_the_storing_not_the_actor(
    server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "taskflow.results.redis")
    namespace = f"tf-test-{uuid.uuid4().hex[:12]}"
    results = RedisResults(server.url, socket_timeout=0.5, retry_timeout=20.0)
    broker = RedisBroker(redis_url, namespace=namespace, results=results)
    runs: list[int] = []

    @broker.actor(queue="q", store_results=True)
    async def square(x: int) -> int:
        runs.append(x)
        return x * x

    assert server.process is not None
    try:
        async with broker, Worker(broker, ["q"], concurrency=2):
            # A frozen server: every store attempt times out while it lasts.
            freeze(server.process.pid)
            try:
                frozen_one = await square.send(3)
                with anyio.fail_after(10):
                    while "results lost the connection" not in caplog.text:
                        await anyio.sleep(0.05)
                await anyio.sleep(1.5)  # several timed-out attempts
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert await frozen_one.result(timeout=10) == 9
            # A stopped server: connections refused while it is down.
            server.shutdown()
            assert not server.ping()
            down_one = await square.send(4)
            with anyio.fail_after(10):
                while caplog.text.count("results lost the connection") < 2:
                    await anyio.sleep(0.05)
            await anyio.sleep(1.0)
            server.start()
            assert await down_one.result(timeout=10) == 16
            await broker.join("q", timeout=10)
    finally:
        delete_namespace(redis_url, namespace)
    # Both outages happened and ended (a pooled connection the restart closed
    # may count as one more, a single failed attempt); each actor ran once.
    lost, back = caplog.text.count("results lost"), caplog.text.count("results reconnected")
    assert lost == back >= 2, (lost, back)
    assert runs == [3, 4]


# -- item: a bounded connection pool ---------------------------------------------


async def test_concurrent_sends_wait_for_a_connection_of_a_bounded_pool(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    broker = RedisBroker(server.url, max_connections=8)

    @broker.actor(queue="q")
    async def noop(i: int) -> None:
        pass

    admin = server.client()
    peak = 0

    async def watch(stop: anyio.Event) -> None:
        nonlocal peak
        while not stop.is_set():
            info = await anyio.to_thread.run_sync(admin.info, "clients")
            peak = max(peak, int(info["connected_clients"]))
            await anyio.sleep(0.01)

    async with broker:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, stop)
            with anyio.fail_after(30):
                async with anyio.create_task_group() as senders:
                    for i in range(2000):
                        senders.start_soon(noop.send, i)
            stop.set()
        assert (await broker.stats("q")).ready == 2000
    admin.close()
    # 8 pooled connections and the watcher's own; never one per send.
    assert peak <= 8 + 1, peak
    assert "lost the connection" not in caplog.text
