"""Worker app for the CLI tests: a MemoryBroker whose worker processes leave marker files.

``TASKFLOW_CLI_MARKERS`` names the directory. Each worker writes
``started-<pid>`` when it starts and ``stopped-<pid>`` when it stops
gracefully. With ``TASKFLOW_CLI_BUSY=async`` each worker also sends itself a
message for ``hold``, which writes ``busy-<pid>`` and then awaits for an hour;
with ``TASKFLOW_CLI_BUSY=sync``, one for ``stuck``, which writes ``busy-<pid>``
and then blocks its thread for an hour.

Importing the module writes ``imported-<pid>``, so tests can tell which
processes loaded the application.

``sqlite_broker`` builds a SQLiteBroker on the file ``TASKFLOW_CLI_SQLITE``
names, for tests where messages cross processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio

from taskflow import Broker, BrokerUnavailable, Middleware, Reject, Worker
from taskflow.brokers.memory import MemoryBroker
from taskflow.brokers.sqlite import SQLiteBroker
from taskflow.middleware import default_middleware

MARKERS_ENV = "TASKFLOW_CLI_MARKERS"
SQLITE_ENV = "TASKFLOW_CLI_SQLITE"
BUSY_ENV = "TASKFLOW_CLI_BUSY"


def mark(name: str) -> None:
    directory = os.environ.get(MARKERS_ENV)
    if directory:
        (Path(directory) / f"{name}-{os.getpid()}").write_text(f"{os.getpid()} {name}\n")


mark("imported")


class Markers(Middleware):
    async def on_startup(self, worker: Worker) -> None:
        mark("started")
        busy = os.environ.get(BUSY_ENV)
        if busy == "async":
            await hold.send()
        elif busy == "sync":
            await stuck.send()

    async def on_shutdown(self, worker: Worker) -> None:
        mark("stopped")


broker = MemoryBroker(middleware=[*default_middleware(), Markers()])


@broker.actor(time_limit=None)
async def hold() -> None:
    mark("busy")
    await anyio.sleep(3600)


@broker.actor(time_limit=None)
def stuck() -> None:
    mark("busy")
    time.sleep(3600)


@broker.actor(queue="emails")
def send_email(to: str, subject: str = "") -> None:
    mark(f"email-{to}")


def sqlite_broker() -> Broker:
    shared = SQLiteBroker(os.environ[SQLITE_ENV], visibility_timeout=2.0)

    @shared.actor
    async def greet(name: str) -> None:
        mark(f"greeted-{name}")

    @shared.actor
    async def doomed(reason: str) -> None:
        raise Reject(reason)

    @shared.actor(max_retries=0)
    async def leaky(url: str) -> None:
        raise ConnectionError(f"could not connect to {url}")

    return shared


def make_broker() -> Broker:
    return broker


def no_actors() -> Broker:
    return MemoryBroker(middleware=[*default_middleware(), Markers()])


def needs_arguments(url: str) -> Broker:
    return MemoryBroker()


def returns_a_string() -> str:
    return "memory://"


not_a_broker = 42


class UnreachableBroker(MemoryBroker):
    async def _connect(self) -> None:
        raise BrokerUnavailable("connection refused at 127.0.0.1:9")


unreachable = UnreachableBroker()

# Set by tests that run commands in-process against a broker they prepared.
prepared: Broker | None = None
