"""The RabbitMQ target of the chaos run (``tests/apps/chaos.py``, ``benchmarks/chaos.py``).

``broker`` is the worker app: a RabbitMQBroker on ``TASKFLOW_AMQP_URL`` with
its queues under ``TASKFLOW_CHAOS_AMQP_PREFIX`` (unique per run), with the
two actors the run sends to, on queue ``work``, each appending ledger lines
``<id> <delivery count> <pid> <event> <unix time>`` to a file per process in
the directory ``TASKFLOW_CHAOS_LEDGER``. Its server fault closes every
connection of the run (workers and producer) on the server, as
``rabbitmqctl close_all_connections`` would, limited to the run's own
connections so that nothing else on a shared node is hit.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from taskflow import Retry, current_message
from taskflow.brokers.rabbitmq import RabbitMQBroker
from taskflow.middleware import default_middleware
from tests.apps.rabbitmq_app import DEFAULT_URL, URL_ENV, close_connections, delete_queues
from tests.apps.sqlite_chaos import LEDGER_ENV, Markers, Row, ledger, read_ledger

PREFIX_ENV = "TASKFLOW_CHAOS_AMQP_PREFIX"
QUEUE = "work"


def build(prefix: str) -> RabbitMQBroker:
    """The chaos app's broker under ``prefix``, with its actors."""
    b = RabbitMQBroker(
        os.environ.get(URL_ENV, DEFAULT_URL),
        prefix=prefix,
        connection_name=f"taskflow-chaos {prefix} pid {os.getpid()}",
        # Kills charge deliveries; the limit is for poison, which the run has none of.
        max_deliveries=50,
        middleware=[*default_middleware(), Markers()],
    )

    @b.actor(queue=QUEUE, max_retries=0, time_limit=None)
    async def record(ms: int = 0) -> None:
        """Sleep ``ms`` milliseconds, with ledger lines."""
        ledger("start")
        if ms:
            await anyio.sleep(ms / 1000)
        ledger("done")

    @b.actor(queue=QUEUE, max_retries=3, time_limit=None)
    async def flaky_once() -> None:
        """Ask to be retried (in 0.3 s) on the first attempt; complete on the next."""
        ledger("start")
        message = current_message()
        assert message is not None
        if message.retries == 0:
            ledger("retry")
            raise Retry(delay=0.3)
        ledger("done")

    return b


broker = build(os.environ.get(PREFIX_ENV, "tf-chaos."))


class RabbitMQChaos:
    """The run's prefix, the worker app's environment and the dropped-connections fault."""

    app = "tests.apps.rabbitmq_chaos:broker"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.url = os.environ.get(URL_ENV, DEFAULT_URL)
        self.prefix = f"tf-chaos-{uuid.uuid4().hex[:10]}."
        self.ledger = directory / "ledger"
        self.ledger.mkdir()
        self.env = {URL_ENV: self.url, PREFIX_ENV: self.prefix, LEDGER_ENV: str(self.ledger)}
        self.broker = build(self.prefix)
        self.server_faults: dict[str, Callable[[], Awaitable[None]]] = {
            "every connection of the run closed by the server": self.drop
        }

    async def drop(self) -> None:
        """Close the run's connections on the server; aio-pika reconnects them."""
        closed = await anyio.to_thread.run_sync(close_connections, self.prefix)
        if not closed:
            raise AssertionError("no connection of the run was open")

    def rows(self) -> list[Row]:
        return read_ledger(self.ledger)

    def close(self) -> None:
        """Delete the run's queues and delay exchanges (on a thread: a loop may be running)."""
        thread = threading.Thread(
            target=delete_queues, args=(self.url, self.prefix, {QUEUE}), kwargs={"exchanges": True}
        )
        thread.start()
        thread.join(60)


def chaos_target(directory: Path) -> RabbitMQChaos:
    """The RabbitMQ target of ``tests.apps.chaos``."""
    return RabbitMQChaos(directory)
