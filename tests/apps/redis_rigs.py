"""Private Redis deployments for tests: a 3-master Cluster, and a master + replica + 3 sentinels.

Every server listens on loopback, on a port of its own, with its files in the
test's temporary directory, and is killed when the rig stops. Waits poll the
servers' own state (``CLUSTER INFO``, ``INFO replication``, ``SENTINEL ...``)
with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import random
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SERVICE = "mymaster"


def free_ports(count: int, low: int = 7300, high: int = 7900, *, bus: bool = False) -> list[int]:
    """``count`` loopback ports nothing listens on (and ``port + 10000`` too, with ``bus``)."""
    ports: list[int] = []
    for port in random.sample(range(low, high), high - low):
        if all(_free(p) for p in ([port, port + 10000] if bus else [port])):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} free ports in {low}..{high}")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def client(port: int, **options: Any) -> redis.Redis:
    """A plain client of one server that never retries by itself."""
    return redis.Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0), **options)


def collect_leaks() -> None:
    """Collect, quietly, sockets that redis-py's Cluster and Sentinel clients leave behind.

    Connections cut by a failover or a cancelled blocking call may be
    dropped without being closed; collected later, in another test, their
    ``ResourceWarning`` would fail that test instead.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def cmd(c: redis.Redis, *args: Any) -> Any:
    """Send one command (``execute_command``, which the type stubs leave untyped)."""
    return c.execute_command(*args)  # type: ignore[no-untyped-call]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (errors count as "not yet") every 50 ms, up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class _Servers:
    """Started ``redis-server`` processes, each with a log file, all killed by ``stop``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, port: int, *args: str) -> None:
        log = self.directory / f"redis-{port}.log"
        command = [
            "redis-server",
            *args,
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.directory)),
            *("--save", "", "--appendonly", "no", "--logfile", str(log)),
        ]
        self.processes[port] = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def wait_up(self, port: int) -> None:
        def up() -> bool:
            process = self.processes[port]
            if process.poll() is not None:
                log = self.directory / f"redis-{port}.log"
                raise RuntimeError(f"redis-server on {port} exited: {log.read_text()[-2000:]}")
            c = client(port, socket_connect_timeout=1)
            try:
                return bool(c.ping())
            finally:
                c.close()

        wait_for(up, 15, f"redis-server on port {port}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(10)
        self.processes.clear()


class ClusterRig:
    """Three masters, no replicas, one slot range each, made by ``redis-cli --cluster create``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.servers = _Servers(directory)
        self.ports = free_ports(3, bus=True)

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/0"

    def start(self) -> None:
        for port in self.ports:
            self.servers.spawn(
                port,
                *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                *("--cluster-node-timeout", "3000"),
            )
        for port in self.ports:
            self.servers.wait_up(port)
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create"),
                *(f"127.0.0.1:{p}" for p in self.ports),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in self.ports:
            wait_for(functools.partial(self._ok, port), 30, f"cluster_state:ok on {port}")

    def _ok(self, port: int) -> bool:
        c = client(port)
        try:
            info = cmd(c, "CLUSTER", "INFO").decode()
        finally:
            c.close()
        return "cluster_state:ok" in info and "cluster_known_nodes:3" in info

    def node_of(self, key: str) -> int:
        """The port of the master that owns ``key``'s slot."""
        c = client(self.ports[0])
        try:
            slot = int(cmd(c, "CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in cmd(c, "CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        finally:
            c.close()
        raise AssertionError(f"no node owns the slot of {key!r}")

    def keys_on(self, port: int, pattern: str) -> list[bytes]:
        """The keys matching ``pattern`` stored on the node at ``port``."""
        c = client(port)
        try:
            return list(c.scan_iter(match=pattern, count=1000))
        finally:
            c.close()

    def stop(self) -> None:
        self.servers.stop()


class SentinelRig:
    """A master, one replica, and three sentinels watching them as ``mymaster``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.servers = _Servers(directory)
        self.master, self.replica, *self.sentinels = free_ports(5)

    @property
    def url(self) -> str:
        """``redis+sentinel://`` naming every sentinel."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        self.servers.spawn(self.master)
        self.servers.spawn(self.replica, "--replicaof", "127.0.0.1", str(self.master))
        self.servers.wait_up(self.master)
        self.servers.wait_up(self.replica)
        wait_for(lambda: self.replicas_of(self.master) >= 1, 20, "the replica in sync")
        for port in self.sentinels:
            conf = self.directory / f"sentinel-{port}.conf"
            conf.write_text(
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 2000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
            )
            self.servers.spawn(port, str(conf), "--sentinel")
        for port in self.sentinels:
            self.servers.wait_up(port)
            wait_for(functools.partial(self._sees_replica, port), 30, f"sentinel {port} ready")

    def replicas_of(self, port: int) -> int:
        """How many replicas are connected to the server at ``port`` and online."""
        c = client(port)
        try:
            info = c.info("replication")
        finally:
            c.close()
        return sum(
            1 for k, v in info.items() if k.startswith("slave") and v.get("state") == "online"
        )

    def _sees_replica(self, port: int) -> bool:
        c = client(port)
        try:
            return bool(cmd(c, "SENTINEL", "REPLICAS", SERVICE))
        finally:
            c.close()

    def current_master(self) -> int:
        """The master's port, as the first sentinel says."""
        c = client(self.sentinels[0])
        try:
            _host, port = cmd(c, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        finally:
            c.close()
        return int(port)

    def failover(self) -> int:
        """Ask a sentinel for a failover; return the new master's port once it has a replica."""
        old = self.current_master()
        c = client(self.sentinels[0])
        try:
            cmd(c, "SENTINEL", "FAILOVER", SERVICE)
        finally:
            c.close()
        wait_for(lambda: self.current_master() != old, 30, "the sentinels to name a new master")
        new = self.current_master()
        wait_for(lambda: self.role(old) == "slave", 30, "the old master to be demoted")
        wait_for(lambda: self.replicas_of(new) >= 1, 30, "the old master to resync")
        return new

    def role(self, port: int) -> str:
        """``master`` or ``slave``, as the server at ``port`` says."""
        c = client(port)
        try:
            return str(c.info("replication")["role"])
        finally:
            c.close()

    def stop(self) -> None:
        self.servers.stop()
