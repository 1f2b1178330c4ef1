"""A chaos run for any broker: a real worker tree, faults at random, a ledger of every message.

``run_chaos(target, ...)`` starts ``taskflow worker <target.app> --processes
N`` (a supervisor and its children), sends messages for a while (plain ones,
delayed ones, and ones that ask to be retried once), and meanwhile injects
faults at random: SIGKILL of a worker child (the supervisor restarts it) and
whatever server faults the target offers (a Redis restart, closed RabbitMQ
connections). Then it lets the queue drain, SIGTERMs the supervisor, and
tallies the ledger the actors wrote outside the system under test:

* every message whose ``send()`` returned ran to completion at least once;
* duplicates (completions beyond one per message) never exceed what could
  have been in flight at the faults;
* no delayed message started before its time;
* nothing is left ready, delayed, in flight or dead;
* the supervisor exits 0 on SIGTERM.

A broker plugs in with a *target* (see :class:`ChaosTarget`) and one line in
``TARGETS``; the fault test of the suite (``tests/brokers/test_*_chaos.py``)
and the soak (``benchmarks/chaos.py --broker NAME --minutes N``) share it.
The target's app must declare two actors on queue ``work`` writing ledger
lines ``<id> <delivery count> <pid> <event> <unix time>``: ``record(ms)``
(events ``start``/``done``) and ``flaky_once()`` (``start``, then ``retry`` on
its first attempt, ``done`` on the next).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import anyio

from taskflow import Broker, BrokerError
from tests.cli.procs import WorkerCli, alive

QUEUE = "work"

Row = tuple[str, int, int, str, float]

#: Concurrent producer tasks (a send refused during an outage holds only its own).
_PRODUCERS = 4

#: Broker name -> "module:factory"; a factory takes a directory and returns a ChaosTarget.
TARGETS = {
    "redis": "tests.apps.redis_app:chaos_target",
    "sqlite": "tests.apps.sqlite_chaos:chaos_target",
    "rabbitmq": "tests.apps.rabbitmq_chaos:chaos_target",
}


class ChaosTarget(Protocol):
    """What a broker provides for a chaos run."""

    @property
    def app(self) -> str:
        """The worker app, ``module:attribute``."""
        ...

    @property
    def env(self) -> dict[str, str]:
        """Environment of the worker processes (the broker's URL, namespace, options, ledger)."""
        ...

    @property
    def broker(self) -> Broker:
        """The producer's broker (not connected), with the same actors as the app."""
        ...

    @property
    def server_faults(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """Server faults by name; each injects one fault and returns when the server is back."""
        ...

    def rows(self) -> list[Row]:
        """The ledger lines of every process, oldest first."""
        ...

    def close(self) -> None:
        """Stop what the target started (private servers) and delete its data."""
        ...


def load_target(name: str, directory: Path) -> ChaosTarget:
    """Build the target registered as ``name`` in :data:`TARGETS`."""
    module, attribute = TARGETS[name].split(":")
    factory: Callable[[Path], ChaosTarget] = getattr(importlib.import_module(module), attribute)
    return factory(directory)


@dataclasses.dataclass
class Ledger:
    """The outcome of a chaos run."""

    sent: int = 0
    refused: int = 0
    delayed: int = 0
    retried: int = 0
    child_kills: int = 0
    server_faults: Counter[str] = dataclasses.field(default_factory=Counter)
    completions: int = 0
    unique: int = 0
    duplicates: int = 0
    duplicate_bound: int = 0
    lost: list[str] = dataclasses.field(default_factory=list)
    early: list[str] = dataclasses.field(default_factory=list)
    residue: tuple[int, ...] = ()
    exit_status: int | None = None
    seconds: float = 0.0

    def problems(self) -> list[str]:
        """The broken promises; empty when the run kept every one."""
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} sent message(s) never completed: {self.lost[:5]}")
        if self.duplicates > self.duplicate_bound:
            found.append(f"{self.duplicates} duplicates, more than {self.duplicate_bound}")
        if self.early:
            found.append(f"{len(self.early)} delayed message(s) started early: {self.early[:5]}")
        if any(self.residue):
            found.append(f"left behind (ready, delayed, in flight, dead): {self.residue}")
        if self.exit_status != 0:
            found.append(f"the supervisor exited with {self.exit_status} on SIGTERM")
        return found

    def lines(self) -> list[str]:
        """The ledger, for a person."""
        faults = ", ".join(f"{n} {k}" for k, n in sorted(self.server_faults.items())) or "none"
        return [
            f"run:          {self.seconds:.0f} s",
            f"sent:         {self.sent} returned ({self.delayed} delayed, {self.retried} "
            f"retried once), {self.refused} refused (BrokerError during an outage)",
            f"faults:       {self.child_kills} worker children SIGKILLed; server: {faults}",
            f"completions:  {self.completions} of {self.unique} messages",
            f"duplicates:   {self.duplicates} (bound: {self.duplicate_bound})",
            f"lost:         {len(self.lost)}",
            f"early:        {len(self.early)}",
            f"left behind:  {self.residue}",
            f"exit status:  {self.exit_status}",
            "OK" if not self.problems() else "FAILED: " + "; ".join(self.problems()),
        ]


class _Run:
    def __init__(
        self, target: ChaosTarget, directory: Path, processes: int, concurrency: int
    ) -> None:
        self.target = target
        self.processes = processes
        self.concurrency = concurrency
        self.ledger = Ledger()
        self.etas: dict[str, float] = {}
        self.sent: set[str] = set()
        markers = directory / "markers"
        markers.mkdir(parents=True, exist_ok=True)
        self.cli = WorkerCli(
            markers,
            directory / "worker.log",
            [target.app, "--processes", str(processes), "--concurrency", str(concurrency)],
            target.env,
        )

    async def produce(self, seconds: float, rate: float, rng: random.Random) -> None:
        record = self.target.broker.actors["record"]
        flaky = self.target.broker.actors["flaky_once"]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            roll = rng.random()
            try:
                if roll < 0.15:
                    delay = rng.uniform(0.1, 3.0)
                    # Due from when the send began: it may publish any time
                    # before it returns (after riding out an outage, say).
                    began = time.time()
                    message = await record.send_with_options(
                        args=(rng.randint(0, 20),), delay=delay
                    )
                    self.etas[message.id] = began + delay
                    self.ledger.delayed += 1
                elif roll < 0.3:
                    message = await flaky.send()
                    self.ledger.retried += 1
                else:
                    message = await record.send(rng.randint(0, 20))
            except BrokerError:
                self.ledger.refused += 1
            else:
                self.sent.add(message.id)
            await anyio.sleep(rng.expovariate(rate))

    def children(self) -> list[int]:
        return sorted(p for p in self.cli.pids() if p != self.cli.pid and alive(p))

    async def inject(self, seconds: float, every: float, rng: random.Random) -> None:
        """Faults one after another, each server fault at least once, the rest child kills."""
        server = list(self.target.server_faults.items())
        plan: list[tuple[str, Callable[[], Awaitable[None]] | None]] = []
        while len(plan) < max(3, int(seconds / every) - 1):
            # Blocks of three child kills with every server fault once among
            # them, early in its block: each surely happens, and keeps recurring.
            block: list[tuple[str, Callable[[], Awaitable[None]] | None]] = [("child", None)] * 3
            for each in server:
                block.insert(rng.randint(0, 1), each)
            plan += block
        deadline = time.monotonic() + seconds
        await anyio.sleep(every)
        while time.monotonic() < deadline:
            name, fault = plan.pop(0) if plan else rng.choice([("child", None), *server])
            if fault is None:
                await self.kill_a_child(rng)
            else:
                await fault()
                self.ledger.server_faults[name] += 1
            await anyio.sleep(rng.uniform(0.5, 1.5) * every)

    async def kill_a_child(self, rng: random.Random) -> None:
        children = self.children()
        if not children:
            return
        victim = rng.choice(children)
        os.kill(victim, signal.SIGKILL)
        with anyio.fail_after(10):
            while alive(victim):
                await anyio.sleep(0.02)
        self.ledger.child_kills += 1
        # Its replacement is up again before the next fault.
        with anyio.fail_after(30):
            while len(self.children()) < self.processes:
                await anyio.sleep(0.05)

    async def settle(self, drain_timeout: float) -> None:
        broker = self.target.broker
        with anyio.move_on_after(drain_timeout):
            while True:
                with contextlib.suppress(BrokerError):
                    stats = await broker.stats(QUEUE)
                    if stats.ready == stats.delayed == stats.in_flight == 0:
                        break
                await anyio.sleep(0.2)
        self.cli.signal(signal.SIGTERM)
        self.ledger.exit_status = await anyio.to_thread.run_sync(self.cli.wait, 60.0)
        self.ledger.residue = tuple(await broker.stats(QUEUE))

    def tally(self) -> None:
        rows = self.target.rows()
        done = Counter(r[0] for r in rows if r[3] == "done")
        ledger = self.ledger
        ledger.sent = len(self.sent)
        ledger.completions = sum(done.values())
        ledger.unique = len(done)
        ledger.duplicates = ledger.completions - ledger.unique
        # A completion is repeated only if its worker died (or lost Redis)
        # between the end of the run and the ack: at most what ran at once.
        in_flight = self.processes * self.concurrency
        ledger.duplicate_bound = ledger.child_kills * self.concurrency + in_flight * sum(
            ledger.server_faults.values()
        )
        ledger.lost = sorted(self.sent - set(done))
        first_start: dict[str, float] = {}
        for r in rows:
            if r[3] == "start":
                first_start.setdefault(r[0], r[4])
        ledger.early = sorted(
            mid for mid, eta in self.etas.items() if first_start.get(mid, eta) < eta - 0.05
        )


async def run_chaos(
    target: ChaosTarget,
    directory: Path,
    *,
    seconds: float,
    rate: float = 100.0,
    fault_every: float = 4.0,
    processes: int = 2,
    concurrency: int = 8,
    drain_timeout: float = 60.0,
    seed: int | None = None,
) -> Ledger:
    """Send for ``seconds`` at about ``rate`` messages/s while faults hit every ``fault_every`` s.

    Returns the ledger; :meth:`Ledger.problems` lists what went wrong.
    """
    rng = random.Random(seed)
    began = time.monotonic()
    run = _Run(target, directory, processes, concurrency)
    try:
        async with target.broker:
            with anyio.fail_after(30):
                while len(run.children()) < processes:
                    await anyio.sleep(0.05)
            async with anyio.create_task_group() as tg:
                for _ in range(_PRODUCERS):
                    tg.start_soon(
                        run.produce, seconds, rate / _PRODUCERS, random.Random(rng.random())
                    )
                tg.start_soon(run.inject, seconds, fault_every, random.Random(rng.random()))
            await run.settle(drain_timeout)
    finally:
        if run.cli.process.poll() is None:
            run.cli.kill_everything()
    run.tally()
    run.ledger.seconds = time.monotonic() - began
    return run.ledger


def print_ledger(ledger: Ledger, out: Any = None) -> None:
    """Print the ledger, one line per figure."""
    for line in ledger.lines():
        print(line, file=out)
