"""Redis worker app for the fault tests, and the Redis helpers of the test suite.

Worker processes (``python -m taskflow worker tests.apps.redis_app:broker``)
build the broker from the environment:

* ``TASKFLOW_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``),
* ``TASKFLOW_REDIS_NAMESPACE`` (default ``taskflow-test``),
* ``TASKFLOW_REDIS_OPTIONS``: JSON object of broker options
  (``visibility_timeout``, ``reaper_interval``, ``max_deliveries`` ...),
* ``TASKFLOW_LEDGER``: a directory; every actor run appends lines
  ``<message id> <delivery count> <pid> <event> <unix time>`` to
  ``<dir>/<pid>.log`` (a file per process, O_APPEND, outside the system under test).

Also here: the contract suite's Redis factory, and :class:`RedisServer`, a
private ``redis-server`` that tests may stop, kill and restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import taskflow
from taskflow import Broker, Middleware, Worker, current_message
from taskflow.brokers.redis import RedisBroker
from taskflow.middleware import current_delivery, default_middleware
from tests.apps.cli_app import mark

if TYPE_CHECKING:
    import pytest

URL_ENV = "TASKFLOW_REDIS_URL"
NAMESPACE_ENV = "TASKFLOW_REDIS_NAMESPACE"
OPTIONS_ENV = "TASKFLOW_REDIS_OPTIONS"
LEDGER_ENV = "TASKFLOW_LEDGER"
QUEUE = "work"

Row = tuple[str, int, int, str, float]


def ledger(event: str) -> None:
    """Append ``<id> <delivery count> <pid> <event> <unix time>`` for the current message."""
    directory = os.environ.get(LEDGER_ENV)
    delivery = current_delivery()
    if not directory or delivery is None:
        return
    line = f"{delivery.message.id} {delivery.delivery_count} {os.getpid()} {event} {time.time()}\n"
    fd = os.open(Path(directory) / f"{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_ledger(directory: Path) -> list[Row]:
    """All ledger lines of all processes: (message id, delivery count, pid, event, time)."""
    rows = []
    for path in directory.glob("*.log"):
        for line in path.read_text().splitlines():
            mid, count, pid, event, at = line.split(" ")
            rows.append((mid, int(count), int(pid), event, float(at)))
    return sorted(rows, key=lambda r: r[4])


_tally: Any = None


def tally_ids(directory: Path) -> list[str]:
    """The ids ``tally`` saw, in all processes."""
    ids: list[str] = []
    for path in directory.glob("*.ids"):
        ids += path.read_text().split()
    return ids


class Markers(Middleware):
    """Leaves ``started-<pid>`` / ``stopped-<pid>`` files for ``tests.cli.procs.WorkerCli``."""

    async def on_startup(self, worker: Worker) -> None:
        mark("started")

    async def on_shutdown(self, worker: Worker) -> None:
        mark("stopped")


def build(
    url: str | None = None, namespace: str | None = None, options: dict[str, Any] | None = None
) -> RedisBroker:
    """A RedisBroker with the fault tests' actors (arguments default to the environment)."""
    if options is None:
        options = json.loads(os.environ.get(OPTIONS_ENV) or "{}")
    b = RedisBroker(
        url or os.environ.get(URL_ENV, "redis://127.0.0.1:6379/15"),
        namespace=namespace or os.environ.get(NAMESPACE_ENV, "taskflow-test"),
        middleware=[*default_middleware(), Markers()],
        **options,
    )

    @b.actor(queue=QUEUE, max_retries=0, time_limit=None)
    async def record(ms: int = 0, again_ms: int | None = None) -> None:
        """Sleep ``ms`` ms on the loop (``again_ms`` when redelivered), with ledger lines."""
        ledger("start")
        delivery = current_delivery()
        redelivered = delivery is not None and delivery.redelivered
        wait = again_ms if redelivered and again_ms is not None else ms
        if wait:
            await anyio.sleep(wait / 1000)
        ledger("done")

    @b.actor(queue=QUEUE, max_retries=0, time_limit=None)
    def record_sync(ms: int = 0) -> None:
        """Sleep ``ms`` milliseconds in a worker thread, with ledger lines."""
        ledger("start")
        time.sleep(ms / 1000)
        ledger("done")

    @b.actor(queue=QUEUE, max_retries=0, time_limit=None)
    async def block_loop(ms: int) -> None:
        """An async actor that wrongly blocks the event loop for ``ms`` milliseconds."""
        ledger("start")
        time.sleep(ms / 1000)  # noqa: ASYNC251 - blocking the loop is the point
        ledger("done")

    _declare_faulty(b)
    return b


def _declare_faulty(b: RedisBroker) -> None:
    """The actors that crash, retry or tally."""

    @b.actor(queue=QUEUE, max_retries=0, time_limit=None)
    async def crash() -> None:
        """Kill the worker process outright, as a segfault or the OOM killer would."""
        ledger("start")
        os._exit(137)

    @b.actor(queue=QUEUE, max_retries=3, time_limit=None)
    async def flaky_once() -> None:
        """Ask to be retried (in 0.3 s) on the first attempt; complete on the next."""
        ledger("start")
        message = current_message()
        assert message is not None
        if message.retries == 0:
            ledger("retry")
            raise taskflow.Retry(delay=0.3)
        ledger("done")

    @b.actor(queue=QUEUE, max_retries=0)
    async def tally() -> None:
        """Write the message id to this process's ``<pid>.ids`` (one buffered write each)."""
        global _tally
        message = current_message()
        if _tally is None:
            directory = Path(os.environ[LEDGER_ENV])
            _tally = (directory / f"{os.getpid()}.ids").open("a", buffering=1)
        assert message is not None
        _tally.write(message.id + "\n")


@cache
def _from_env() -> RedisBroker:
    return build()


def __getattr__(name: str) -> Any:
    # Built on first use, so that importing this module needs no environment.
    if name == "broker":
        return _from_env()
    raise AttributeError(name)


# -- the contract suite's factory ---------------------------------------------


def contract_broker(request: pytest.FixtureRequest, options: dict[str, Any]) -> Broker:
    """A RedisBroker in a namespace of its own on the test Redis, deleted after the test."""
    url: str = request.getfixturevalue("redis_url")
    namespace = f"tf-test-{uuid.uuid4().hex[:12]}"
    request.addfinalizer(lambda: delete_namespace(url, namespace))
    return RedisBroker(url, namespace=namespace, reaper_interval=0.5, **options)


def delete_namespace(url: str, namespace: str) -> None:
    """Delete every key of ``namespace`` (the broker's, and its result backend's)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match="{" + namespace + "}:*", count=1000))
        keys += client.scan_iter(match=namespace + ":*", count=1000)
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# -- a private redis-server for tests that stop, kill or reconfigure it -------


def free_port(low: int = 6300, high: int = 6400) -> int:
    """A loopback TCP port in ``[low, high)`` that nothing listens on right now.

    Tried in random order: tests that stop a server and start it again on
    its port must not find another run's new server there in between.
    """
    for port in random.sample(range(low, high), high - low):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high}")


class RedisServer:
    """A redis-server of the test's own on a 63xx port, with AOF ``appendfsync always``.

    Never the shared server: tests may shut it down, SIGKILL it and start it
    again on the same port and directory (so its AOF is replayed).
    """

    def __init__(self, directory: Path, *extra: str, tls: dict[str, Path] | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.extra = list(extra)
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _listen(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            *("--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"),
            *("--tls-cert-file", str(self.tls["cert"]), "--tls-key-file", str(self.tls["key"])),
            *("--tls-ca-cert-file", str(self.tls["ca"])),
        ]

    def start(self) -> None:
        command = [
            "redis-server",
            *self._listen(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log),
            *self.extra,
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ping():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start: {self.log.read_text()}")
            time.sleep(0.02)

    def ping(self) -> bool:
        with contextlib.suppress(redis.RedisError):
            client = self.client(socket_connect_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        return False

    def client(self, **options: Any) -> redis.Redis:
        """A plain client that never retries (redis-py's default retries take seconds)."""
        options.setdefault("retry", Retry(NoBackoff(), 0))
        if self.tls is not None:
            options = {"ssl": True, "ssl_ca_certs": str(self.tls["ca"]), **options}
            return redis.Redis(host="localhost", port=self.port, socket_timeout=5, **options)
        return redis.Redis(port=self.port, socket_timeout=5, **options)

    def shutdown(self) -> None:
        """Stop it the polite way (``SHUTDOWN``), as an operator would."""
        self.client().shutdown()
        self._wait()

    def kill(self) -> None:
        """SIGKILL it: no chance to write anything more."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self._wait()

    def _wait(self) -> None:
        assert self.process is not None
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self._wait()


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a server certificate for the DNS name ``localhost`` only (not 127.0.0.1)."""
    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = directory / "tls"
    d.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    new_key = ("-newkey", "rsa:2048", "-nodes")
    openssl("req", "-x509", *new_key, "-days", "1", "-keyout", "ca.key", "-out", "ca.crt",
            "-subj", "/CN=taskflow test CA")  # fmt: skip
    openssl(
        "req", *new_key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


# -- the chaos run's target (tests/apps/chaos.py) --------------------------------


class RedisChaos:
    """A private redis-server, the worker app's environment and faults for a chaos run."""

    app = "tests.apps.redis_app:broker"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.server = RedisServer(directory)
        self.server.start()
        self.ledger = directory / "ledger"
        self.ledger.mkdir()
        # Leases outlive a Redis restart (about a second of outage).
        options: dict[str, Any] = {"visibility_timeout": 3.0, "reaper_interval": 0.5}
        self.env = {
            URL_ENV: self.server.url,
            NAMESPACE_ENV: "chaos",
            OPTIONS_ENV: json.dumps(options),
            LEDGER_ENV: str(self.ledger),
        }
        # The producer gives up on a send after a second: an outage refuses sends.
        self.broker = build(self.server.url, "chaos", {**options, "send_timeout": 1.0})
        self.server_faults: dict[str, Callable[[], Awaitable[None]]] = {
            "Redis restarts (SIGKILL)": self.restart
        }

    async def restart(self) -> None:
        """SIGKILL the server (AOF, fsync always), keep it down a second, start it again."""
        await anyio.to_thread.run_sync(self.server.kill)
        assert not self.server.ping()
        await anyio.sleep(1.0)
        await anyio.to_thread.run_sync(self.server.start)

    def rows(self) -> list[Row]:
        return read_ledger(self.ledger)

    def close(self) -> None:
        self.server.stop()


def chaos_target(directory: Path) -> RedisChaos:
    """The Redis target of ``tests.apps.chaos``."""
    return RedisChaos(directory)
