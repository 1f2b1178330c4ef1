"""taskflow against its peers: one command, one table.

Run: python3 benchmarks/compare.py [--quick] [--runs 3] [--libs taskflow,dramatiq,...]
     (or ``nox -s bench -- [same options]``)

For every library this script creates a virtualenv under ``.bench/<library>``
(reused when its requirements did not change), installs the library with its
Redis and RabbitMQ extras (taskflow from this checkout, editable), and runs
the scenarios of ``benchmarks/README.md`` against the local Redis (one
database of its own, default 14, flushed with FLUSHDB between scenarios and
never touched otherwise) and RabbitMQ (queues under a unique prefix, deleted
afterwards). Workers are started with each library's own CLI, one worker
process each, the way a user would run them; every setting is listed in
``LIBRARIES`` below and in ``benchmarks/README.md``.

Each scenario runs ``--runs`` times (libraries interleaved in every round)
and the table shows the median of the runs, with each figure's ratio to the
best of the same broker in the same table.

Every job body ends with the same Redis ``INCR`` (``peers/_common.py``). Each
round also runs those bodies with no library at all (``peers/ceiling_peer.py``:
long-lived coroutines on one event loop), the body-only ceiling, and a second
table gives every library's processing rates as a fraction of the ceiling of
the same round. After every processing run the driver stops the worker and
checks the count: the ``INCR`` counter and the number of distinct job ids the
worker saw must both be exactly the number of jobs sent, or the run fails
(exit status 1) naming the duplicates or losses. Redis commands per
one-by-one send are counted with ``MONITOR`` on a private ``redis-server``
(top-level commands, not those a script runs), as the difference between 50
and 250 sends, so connection set-up is left out. On a 2-core machine the default
run takes 25-28 minutes (the slower peers need up to a minute per
20,000-job scenario), ``--runs 1`` about 9 and ``--quick`` 5-7.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / "peers"
VENVS = ROOT / ".bench"

# Scenario -> worker command line, given the virtualenv's bin directory.
WorkerArgv = Callable[[Path, str], list[str]]


@dataclasses.dataclass(frozen=True)
class Library:
    """How to install one library and run its worker."""

    name: str
    requirements: tuple[str, ...]
    brokers: tuple[str, ...]
    worker: WorkerArgv
    versions: tuple[str, ...]  # distributions whose versions the report names
    env: dict[str, str] = dataclasses.field(default_factory=dict)


def concurrency(scenario: str) -> int:
    """Jobs in flight in the worker, for libraries that take a number (also ``BENCH_CONCURRENCY``)."""
    return 1000 if scenario == "io" else 100


def _taskflow(bin: Path, scenario: str) -> list[str]:
    return [str(bin / "taskflow"), "worker", "taskflow_peer:broker", "--processes", "1",
            "--concurrency", str(concurrency(scenario)), "--log-level", "warning"]  # fmt: skip


def _dramatiq(bin: Path, scenario: str) -> list[str]:
    if scenario == "io":
        return [str(bin / "dramatiq-gevent"), "dramatiq_peer", "-p", "1", "-t", "1000"]
    return [str(bin / "dramatiq"), "dramatiq_peer", "-p", "1", "-t", "8"]


def _taskiq(bin: Path, scenario: str) -> list[str]:
    return [str(bin / "taskiq"), "worker", "taskiq_peer:broker", "--workers", "1",
            "--max-async-tasks", str(concurrency(scenario)), "--log-level", "WARNING"]  # fmt: skip


def _arq(bin: Path, scenario: str) -> list[str]:
    return [str(bin / "arq"), "arq_peer.WorkerSettings"]


def _saq(bin: Path, scenario: str) -> list[str]:
    return [str(bin / "saq"), "saq_peer.settings", "--workers", "1", "--quiet"]


def _streaq(bin: Path, scenario: str) -> list[str]:
    return [str(bin / "streaq"), "run", "streaq_peer:worker", "--workers", "1"]


def _celery(bin: Path, scenario: str) -> list[str]:
    pool = ["-P", "gevent", "-c", "1000"] if scenario == "io" else ["-P", "solo"]
    return [str(bin / "celery"), "-A", "celery_peer", "worker", *pool, "-l", "WARNING",
            "--without-heartbeat", "--without-gossip", "--without-mingle"]  # fmt: skip


LIBRARIES = {
    lib.name: lib
    for lib in (
        Library(
            "taskflow",
            ("-e", f"{ROOT}[redis,rabbitmq,uvloop]"),
            ("redis", "rabbitmq"),
            _taskflow,
            ("taskflow", "redis", "hiredis", "aio-pika", "uvloop"),
        ),
        Library(
            "dramatiq",
            ("dramatiq[redis,rabbitmq,gevent]==2.2.1", "redis[hiredis]"),
            ("redis", "rabbitmq"),
            _dramatiq,
            ("dramatiq", "redis", "hiredis", "pika", "gevent"),
        ),
        Library(
            "taskiq",
            (
                "taskiq[uv]==0.13.0",
                "taskiq-redis==1.2.4",
                "taskiq-aio-pika==0.6.1",
                "redis[hiredis]",
            ),  # fmt: skip
            ("redis", "rabbitmq"),
            _taskiq,
            ("taskiq", "taskiq-redis", "taskiq-aio-pika", "redis", "hiredis", "uvloop"),
        ),
        Library(
            "arq",
            ("arq==0.28.0", "uvloop"),
            ("redis",),
            _arq,
            ("arq", "redis", "hiredis", "uvloop"),
        ),  # fmt: skip
        Library(
            "saq",
            ("saq[redis,hiredis]==0.26.4", "typing-extensions", "uvloop"),
            ("redis",),
            _saq,
            ("saq", "redis", "hiredis", "uvloop"),
        ),  # fmt: skip
        Library(
            "streaq",
            ("streaq==7.2.0", "uvloop"),
            ("redis",),
            _streaq,
            ("streaq", "coredis", "uvloop"),
        ),  # fmt: skip
        Library(
            "celery",
            ("celery[redis,gevent]==5.7.0", "redis[hiredis]"),
            ("redis",),
            _celery,
            ("celery", "kombu", "redis", "hiredis", "gevent"),
        ),
    )
}

CEILING = "body only (ceiling)"
SCENARIOS = (
    "single", "cmds", "bulk", "noop", "noop_cpu", "io", "io_cpu", "p50", "p99", "rss", "rss_tree",
)  # fmt: skip
HEADERS = {
    "single": "enqueue 1-by-1 /s",
    "cmds": "Redis commands per send",
    "bulk": "enqueue bulk /s",
    "noop": "no-op /s",
    "noop_cpu": "no-op CPU µs/job",
    "io": "I/O 50 ms /s",
    "io_cpu": "I/O CPU µs/job",
    "p50": "latency p50 ms",
    "p99": "latency p99 ms",
    "rss": "peak worker RSS MiB",
    "rss_tree": "peak tree RSS MiB",
}
HIGHER_IS_BETTER = {"single", "bulk", "noop", "io"}


@dataclasses.dataclass
class Sizes:
    jobs: int
    singles: int
    latency_rate: float
    latency_seconds: float
    timeout: float


FULL = Sizes(jobs=20_000, singles=2_000, latency_rate=200, latency_seconds=5, timeout=600)
QUICK = Sizes(jobs=2_000, singles=500, latency_rate=100, latency_seconds=2, timeout=60)


# -- virtualenvs --------------------------------------------------------------


def venv_for(lib: Library, *, offline: bool) -> Path:
    """Create or reuse ``.bench/<lib>`` with the library installed; return its bin dir."""
    path = VENVS / lib.name
    bin = path / "bin"
    stamp = path / ".requirements"
    wanted = hashlib.sha256("\n".join((sys.version, *lib.requirements)).encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted and (bin / "python").exists():
        return bin
    if offline:
        raise SystemExit(f"{path} is missing or stale and --no-install was given")
    print(f"installing {lib.name} into {path} ...", file=sys.stderr, flush=True)
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(bin / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    result = subprocess.run([*pip, *lib.requirements], capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallFailed(f"{lib.name}: pip install failed:\n{result.stderr[-2000:]}")
    stamp.write_text(wanted)
    return bin


class InstallFailed(Exception):
    pass


def versions(bin: Path, names: tuple[str, ...]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run(
        [str(bin / "python"), "-c", code, *names], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, str] = json.loads(out)
    return result


# -- processes ----------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def peak_rss_mib(root: int) -> tuple[float, float]:
    """VmHWM of the heaviest process in ``root``'s tree, and of the whole tree, in MiB."""
    tree = _children()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(tree.get(pid, []))
    peaks: list[float] = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                peaks.extend(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
        except OSError:
            continue
    return (max(peaks, default=0.0), sum(peaks))


class Session:
    """Runs the phases of one library on one broker, in one round."""

    def __init__(self, lib: Library, bin: Path, broker: str, args: argparse.Namespace) -> None:
        self.lib = lib
        self.bin = bin
        self.broker = broker
        self.args = args
        self.sizes: Sizes = args.sizes
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{lib.name}-"))
        self.prefix = ""
        self.log = self.tmp / "worker.log"

    def env(self, redis_url: str | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "BENCH_"))}
        env.update(
            PYTHONPATH=str(PEERS),
            PYTHONDONTWRITEBYTECODE="1",
            BENCH_BROKER=self.broker,
            BENCH_PREFIX=self.prefix,
            BENCH_REDIS_URL=redis_url or self.args.redis_url,
            BENCH_AMQP_URL=self.args.amqp_url,
            **self.lib.env,
            **extra,
        )
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def new_prefix(self) -> None:
        self.prefix = f"bp-{self.lib.name}-{uuid.uuid4().hex[:8]}"

    def produce(
        self, *command: str, out: Path | None = None, redis_url: str | None = None
    ) -> dict[str, Any]:
        extra = {"BENCH_OUT": str(out)} if out else {}
        result = subprocess.run(
            [str(self.bin / "python"), str(PEERS / f"{self.lib.name}_peer.py"), *command],
            cwd=PEERS,
            env=self.env(redis_url, **extra),
            capture_output=True,
            text=True,
            timeout=self.sizes.timeout * 2,
        )
        if result.returncode != 0:
            raise PhaseFailed(f"producer {' '.join(command)} failed:\n{result.stderr[-3000:]}")
        figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return figures

    def fill(self, kind: str, jobs: int, producers: int = 4) -> None:
        """Enqueue ``jobs`` through the bulk path from several producers at once (not timed)."""
        argv = [str(self.bin / "python"), str(PEERS / f"{self.lib.name}_peer.py"), "bulk"]
        share = -(-jobs // producers)
        procs = [
            subprocess.Popen(
                [*argv, str(min(share, jobs - i * share)), kind, str(i * share)],
                cwd=PEERS,
                env=self.env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(producers)
        ]
        errors = [p.communicate(timeout=self.sizes.timeout * 2)[1] for p in procs]
        for p, err in zip(procs, errors, strict=True):
            if p.returncode != 0:
                raise PhaseFailed(f"filling the queue failed:\n{err.decode()[-3000:]}")

    def cleanup(self) -> None:
        if self.broker == "rabbitmq":
            try:
                self.produce("cleanup")
            except (PhaseFailed, subprocess.TimeoutExpired) as exc:
                print(f"warning: cleanup of {self.prefix} failed: {exc}", file=sys.stderr)
        flush(self.args)  # the INCR counters live on Redis for every broker

    def work(self, scenario: str, expect: int, producer: tuple[str, ...] = ()) -> dict[str, Any]:
        """Start the worker for ``scenario``, wait for ``expect`` jobs, stop it."""
        out = self.tmp / f"{scenario}-{uuid.uuid4().hex[:6]}.json"
        argv = self.lib.worker(self.bin, scenario)
        env = self.env(
            BENCH_OUT=str(out),
            BENCH_EXPECT=str(expect),
            BENCH_CONCURRENCY=str(concurrency(scenario)),
        )
        with open(self.log, "ab") as log:
            worker = subprocess.Popen(
                argv, cwd=PEERS, env=env, stdout=log, stderr=log, start_new_session=True
            )
        try:
            sent: dict[str, Any] = {}
            if producer:
                sent = self.produce(*producer, out=out)
            deadline = time.monotonic() + self.sizes.timeout
            while not out.exists():
                if worker.poll() is not None:
                    raise PhaseFailed(f"worker exited with {worker.returncode}; {self.tail()}")
                if time.monotonic() > deadline:
                    raise PhaseFailed(
                        f"{scenario}: not done in {self.sizes.timeout} s; {self.tail()}"
                    )
                time.sleep(0.02)
            rss, tree = peak_rss_mib(worker.pid)
            result: dict[str, Any] = json.loads(out.read_text())
            result.update(rss=rss, tree=tree, **sent)
        finally:
            stop(worker)
        self.check_count(scenario, expect, result)
        return result

    def check_count(self, scenario: str, expect: int, result: dict[str, Any]) -> None:
        """Fail the run unless every job ran exactly once (the INCR counter, read after the stop, and the ledger)."""
        counter = int(_redis_cli(self.args, "GET", f"{self.prefix}:done") or 0)
        problems = []
        if counter != expect:
            problems.append(f"the INCR counter is {counter}")
        if result.get("duplicates"):
            problems.append(f"{result['duplicates']} duplicate job ids")
        if result.get("distinct", expect) != expect:
            problems.append(f"{result['distinct']} distinct job ids")
        if problems:
            raise CountFailed(
                f"{scenario}: count check failed, {expect} jobs sent but " + ", ".join(problems)
            )

    def tail(self) -> str:
        try:
            return "worker log:\n" + self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "no worker log"

    def run(self) -> dict[str, Any]:
        s = self.sizes
        figures: dict[str, Any] = {}
        try:
            self.new_prefix()
            figures["single"] = self.produce("single", str(s.singles))["rate"]
            self.cleanup()
            if self.broker == "redis" and self.args.private_redis:
                figures["cmds"], figures["cmd_names"] = self.commands_per_send()
            rss = []
            for kind in ("noop", "io"):
                self.new_prefix()
                if kind == "noop":
                    figures["bulk"] = self.produce("bulk", str(s.jobs), kind)["rate"]
                else:
                    self.fill(kind, s.jobs)
                done = self.work(kind, s.jobs)
                figures[kind] = done["count"] / (done["last"] - done["first"])
                figures[f"{kind}_cpu"] = 1e6 * done["cpu"] / done["count"]
                rss.append((done["rss"], done["tree"]))
                self.cleanup()
            self.new_prefix()
            total = round(s.latency_rate * s.latency_seconds)
            done = self.work(
                "latency",
                total,
                producer=("latency", str(s.latency_rate), str(s.latency_seconds)),
            )
            delays = sorted(done["delays"])
            figures["p50"] = 1000 * delays[len(delays) // 2]
            figures["p99"] = 1000 * delays[min(len(delays) - 1, int(len(delays) * 0.99))]
            rss.append((done["rss"], done["tree"]))
            self.cleanup()
            figures["rss"] = max(r for r, _ in rss)
            figures["rss_tree"] = max(t for _, t in rss)
        except (PhaseFailed, subprocess.TimeoutExpired) as exc:
            figures["error"] = str(exc)
            figures["count_failed"] = isinstance(exc, CountFailed)
            print(f"error: {self.lib.name}/{self.broker}: {exc}", file=sys.stderr, flush=True)
            self.cleanup()
        except KeyboardInterrupt:
            self.cleanup()
            raise
        return figures

    def commands_per_send(self) -> tuple[float, dict[str, float]]:
        """Top-level Redis commands per one-by-one send: (250 sends - 50 sends) / 200, on a private server."""
        private: PrivateRedis = self.args.private_redis
        seen = []
        for n in (50, 250):
            self.new_prefix()
            with private.monitor() as commands:
                self.produce("single", str(n), redis_url=private.url)
            seen.append(commands)
            private.flush()
        per = {k: (v - seen[0][k]) / 200 for k, v in seen[1].items() if v > seen[0][k]}
        return sum(per.values()), per

    def run_ceiling(self) -> dict[str, Any]:
        """The body-only ceiling: the noop and io bodies, no library (``peers/ceiling_peer.py``)."""
        figures: dict[str, Any] = {}
        try:
            for kind in ("noop", "io"):
                self.new_prefix()
                done = self.work(kind, self.sizes.jobs)
                figures[kind] = done["count"] / (done["last"] - done["first"])
                figures[f"{kind}_cpu"] = 1e6 * done["cpu"] / done["count"]
                figures["rss"] = max(figures.get("rss", 0.0), done["rss"])
                figures["rss_tree"] = max(figures.get("rss_tree", 0.0), done["tree"])
                self.cleanup()
        except (PhaseFailed, subprocess.TimeoutExpired) as exc:
            figures["error"] = str(exc)
            figures["count_failed"] = isinstance(exc, CountFailed)
            print(f"error: {CEILING}: {exc}", file=sys.stderr, flush=True)
            self.cleanup()
        return figures


class PhaseFailed(Exception):
    pass


class CountFailed(PhaseFailed):
    """A processing run where a job ran twice or never."""


class PrivateRedis:
    """A ``redis-server`` of the benchmark's own (no persistence), for counting commands."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while self.cli("PING") != "PONG":
            if time.monotonic() > deadline:
                raise SystemExit("the private redis-server did not start")
            time.sleep(0.05)

    def cli(self, *command: str) -> str:
        argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    def flush(self) -> None:
        self.cli("FLUSHALL")

    @contextmanager
    def monitor(self) -> Iterator[Counter[str]]:
        """Count the top-level commands (not those run by scripts) sent while the block runs."""
        commands: Counter[str] = Counter()
        with tempfile.TemporaryFile() as f:
            argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "monitor"]
            proc = subprocess.Popen(argv, stdout=f)
            try:
                self._wait_for_output(f)
                yield commands
                time.sleep(0.3)
            finally:
                proc.terminate()
                proc.wait(10)
            f.seek(0)
            for line in f.read().decode(errors="replace").splitlines():
                m = _MONITOR_LINE.match(line)
                if m and m.group(1) != "lua":
                    commands[m.group(2).upper()] += 1

    def _wait_for_output(self, f: Any) -> None:
        deadline = time.monotonic() + 10
        while os.fstat(f.fileno()).st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


_MONITOR_LINE = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"')


def stop(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group (it has its own session), SIGKILL it after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(worker.pid, sig)
        except ProcessLookupError:
            return
        try:
            worker.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; give its children the same chance.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(worker.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


# -- Redis --------------------------------------------------------------------


def _redis_cli(args: argparse.Namespace, *command: str) -> str:
    from urllib.parse import urlsplit

    url = urlsplit(args.redis_url)
    db = (url.path or "/0").strip("/") or "0"
    argv = ["redis-cli", "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379), "-n", db]
    return subprocess.run(
        [*argv, *command], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()


def flush(args: argparse.Namespace) -> None:
    """FLUSHDB on the benchmark's own database (never FLUSHALL)."""
    _redis_cli(args, "FLUSHDB")


def redis_ceiling(args: argparse.Namespace) -> dict[str, str]:
    from urllib.parse import urlsplit

    url = urlsplit(args.redis_url)
    db = (url.path or "/0").strip("/") or "0"
    n = "200000" if args.sizes is FULL else "20000"
    base = ["redis-benchmark", "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379),
            "--dbnum", db, "-t", "lpush,rpop", "-n", n, "-q"]  # fmt: skip
    out = {}
    for label, extra in (("", []), (" -P 16", ["-P", "16"])):
        text = subprocess.run(
            [*base, *extra], check=True, capture_output=True, text=True, timeout=300
        ).stdout
        for line in text.replace("\r", "\n").splitlines():
            if "requests per second" in line and ":" in line:
                name, rest = line.split(":", 1)
                out[f"{name.strip()}{label}"] = rest.split("requests")[0].strip()
    flush(args)
    return out


# -- the table ----------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(
    rounds: list[dict[tuple[str, str], dict[str, Any]]],
) -> dict[tuple[str, str], dict[str, Any]]:
    keys = [k for r in rounds for k in r]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key in dict.fromkeys(keys):
        samples = [r[key] for r in rounds if key in r]
        row: dict[str, Any] = {"runs": len([s for s in samples if "error" not in s])}
        for scenario in SCENARIOS:
            values: list[float] = []
            for s in samples:
                v = s.get(scenario)
                values.extend(v if isinstance(v, list) else [] if v is None else [v])
            row[scenario] = median(values)
        row["errors"] = [s["error"] for s in samples if "error" in s]
        row["cmd_names"] = _median_names([s.get("cmd_names") or {} for s in samples])
        rows[key] = row
    return rows


def _median_names(samples: list[dict[str, float]]) -> dict[str, float]:
    names = {n for s in samples for n in s}
    return {n: statistics.median(s.get(n, 0.0) for s in samples if s) for n in sorted(names)}


def fractions(rounds: Rounds) -> list[tuple[str, str, float | None, float | None]]:
    """Each library's no-op and I/O rates over the body-only ceiling of the same round (medians)."""
    out = []
    keys = [k for r in rounds for k in r if k[0] != CEILING]
    for key in dict.fromkeys(keys):
        ratios: dict[str, list[float]] = {"noop": [], "io": []}
        for r in rounds:
            ceiling, row = r.get((CEILING, "none"), {}), r.get(key, {})
            for kind, values in ratios.items():
                if ceiling.get(kind) and row.get(kind):
                    values.append(row[kind] / ceiling[kind])
        out.append((key[0], key[1], median(ratios["noop"]), median(ratios["io"])))
    return out


def fraction_table(rounds: Rounds) -> str:
    lines = [
        "| library | broker | no-op / ceiling | I/O 50 ms / ceiling |",
        "|---|---|---:|---:|",
    ]
    for name, broker, noop, io in fractions(rounds):
        cells = ["—" if v is None else f"{v:.2f}" for v in (noop, io)]
        lines.append(f"| {name} | {broker} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def fmt(value: float | None, scenario: str) -> str:
    if value is None:
        return "—"
    if scenario in ("p50", "p99", "cmds"):
        return f"{value:,.1f}"
    if scenario in ("rss", "rss_tree"):
        return f"{value:,.0f}"
    return f"{value:,.0f}"


def table(rows: dict[tuple[str, str], dict[str, Any]]) -> str:
    best: dict[tuple[str, str], float] = {}
    for (_, broker), row in rows.items():
        for scenario in SCENARIOS:
            v = row[scenario]
            if v is None:
                continue
            key = (broker, scenario)
            better = max if scenario in HIGHER_IS_BETTER else min
            best[key] = better(best.get(key, v), v)
    head = ["library", "broker", *(HEADERS[s] for s in SCENARIOS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * len(SCENARIOS)]
    for (name, broker), row in rows.items():
        cells = [name, broker]
        for scenario in SCENARIOS:
            v = row[scenario]
            if v is None:
                cells.append("—")
                continue
            b = best[(broker, scenario)]
            ratio = v / b if b else 0.0
            mark = "**" if v == b else ""
            cells.append(f"{mark}{fmt(v, scenario)}{mark} ({ratio:.2f}×)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB, {platform.platform()}, "
        f"Python {platform.python_version()}, load average at start {load}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument("--runs", type=int, help="rounds (default 3, or 1 with --quick)")
    parser.add_argument("--libs", default=",".join(LIBRARIES), help="comma-separated")
    parser.add_argument("--brokers", default="redis,rabbitmq", help="redis and/or rabbitmq")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="a database of the benchmark's own: it must be empty, and is flushed",
    )
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--no-install", action="store_true", help="use .bench/ as it is")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    args = parser.parse_args()
    args.sizes = QUICK if args.quick else FULL
    args.runs = args.runs or (1 if args.quick else 3)
    return args


def install(args: argparse.Namespace, notes: list[str]) -> list[tuple[Library, Path]]:
    """Virtualenvs of the selected libraries that could be installed (the rest go to ``notes``)."""
    selected = []
    for name in args.libs.split(","):
        lib = LIBRARIES[name]
        try:
            selected.append((lib, venv_for(lib, offline=args.no_install)))
        except InstallFailed as exc:
            notes.append(f"{name} could not be installed: {exc}")
    return selected


Rounds = list[dict[tuple[str, str], dict[str, Any]]]


def _ceiling_argv(bin: Path, scenario: str) -> list[str]:
    return [str(bin / "python"), str(PEERS / "ceiling_peer.py"), scenario]


CEILING_LIB = Library("ceiling", (), ("none",), _ceiling_argv, ())


def ceiling_bin(selected: list[tuple[Library, Path]]) -> Path:
    """taskflow's virtualenv (it has uvloop, as the taskflow worker does), else this Python's."""
    return next(
        (bin for lib, bin in selected if lib.name == "taskflow"), Path(sys.executable).parent
    )


def measure(args: argparse.Namespace, selected: list[tuple[Library, Path]]) -> Rounds:
    rounds: Rounds = []
    for n in range(args.runs):
        results: dict[tuple[str, str], dict[str, Any]] = {}
        began = time.monotonic()
        results[(CEILING, "none")] = Session(
            CEILING_LIB, ceiling_bin(selected), "none", args
        ).run_ceiling()
        short = {k: round(v) for k, v in results[(CEILING, "none")].items() if isinstance(v, float)}
        print(f"# round {n + 1}/{args.runs} {CEILING} ({time.monotonic() - began:.0f} s): {short}",
              file=sys.stderr, flush=True)  # fmt: skip
        for lib, bin in selected:
            for broker in args.brokers.split(","):
                if broker not in lib.brokers:
                    continue
                began = time.monotonic()
                figures = Session(lib, bin, broker, args).run()
                results[(lib.name, broker)] = figures
                short = {k: round(v) if isinstance(v, float) else v for k, v in figures.items()}
                print(
                    f"# round {n + 1}/{args.runs} {lib.name}/{broker} "
                    f"({time.monotonic() - began:.0f} s): {short}",
                    file=sys.stderr,
                    flush=True,
                )
        rounds.append(results)
    return rounds


def footnotes(rows: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    notes = []
    for (name, broker), row in rows.items():
        if row["cmd_names"]:
            names = ", ".join(f"{k} {v:.2f}" for k, v in row["cmd_names"].items())
            notes.append(f"{name}/{broker}: Redis commands per one-by-one send: {names}")
        notes.extend(f"{name}/{broker} failed a run: {e.splitlines()[0]}" for e in row["errors"])
    return notes


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    # Ctrl-C or SIGTERM (even when started in the background, where SIGINT is
    # ignored) unwinds through every ``finally``, which stops the running worker.
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    args = parse_args()
    started = time.monotonic()
    if _redis_cli(args, "DBSIZE") != "0":
        raise SystemExit(
            f"{args.redis_url} is not empty; the benchmark flushes that database between "
            "scenarios, so give it one of its own with --redis-url redis://host:port/<db>"
        )
    print(f"# machine: {machine()}", flush=True)
    notes: list[str] = []
    selected = install(args, notes)
    found = {lib.name: versions(bin, lib.versions) for lib, bin in selected}
    for name, v in found.items():
        print(f"# {name}: " + ", ".join(f"{k} {x}" for k, x in v.items()), flush=True)
    ceiling = redis_ceiling(args)
    print("# redis-benchmark ceiling: " + ", ".join(f"{k} {v}/s" for k, v in ceiling.items()))

    args.private_redis = PrivateRedis()
    try:
        rounds = measure(args, selected)
    finally:
        args.private_redis.close()
    rows = summarize(rounds)
    s = args.sizes
    print()
    print(table(rows))
    print()
    print(fraction_table(rounds))
    print()
    print(
        f"Medians of {args.runs} run(s), {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{time.monotonic() - started:.0f} s in all; load average at the end "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}. Jobs per processing run: "
        f"{s.jobs:,}; one-by-one enqueue: {s.singles:,}; latency: {s.latency_rate:.0f} msg/s "
        f"for {s.latency_seconds:.0f} s. Ratios compare with the best of the same broker "
        "(bold): rates as a fraction of the fastest; CPU, latency and memory as a multiple "
        "of the lowest."
    )
    print("redis-benchmark (the ceiling): " + ", ".join(f"{k} {v}/s" for k, v in ceiling.items()))
    for note in notes + footnotes(rows):
        print(f"- {note}")
    if args.json:
        samples = [{f"{k[0]}/{k[1]}": v for k, v in r.items()} for r in rounds]
        report = {"rounds": samples, "ceiling": ceiling, "versions": found, "machine": machine()}
        args.json.write_text(json.dumps(report, indent=1))
    failed = [f"{k[0]}/{k[1]}" for r in rounds for k, v in r.items() if v.get("count_failed")]
    if failed:
        raise SystemExit(f"count check failed (a duplicate or a loss): {', '.join(failed)}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as exc:
        raise SystemExit(f"interrupted ({exc}); the running worker was stopped") from None
