"""The example apps end to end: real web server, real ``taskflow worker``, real broker, HTTP.

Each test starts the example's server (uvicorn, or aiohttp's runner) on a
loopback port and its worker process with the commands of the example's
README, talks to it with httpx, and stops both with SIGTERM, as a service
manager would; both must exit cleanly.
"""

from __future__ import annotations

import itertools
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from taskflow import broker_from_url
from tests.integrations.stack import AIOHTTP, FASTAPI, Example, Stack, delete_redis_keys, running

pytestmark = pytest.mark.anyio

#: Longest a job may take, end to end, in these tests (seconds).
JOB_TIMEOUT = 20.0


@dataclass
class Backend:
    url: str
    namespace: str = ""
    job_ids: set[str] = field(default_factory=set)


def make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A SQLite file of the test's own, or a namespace of the test's own on the test Redis."""
    if kind == "sqlite":
        return Backend(f"sqlite:///{tmp_path}/app.sqlite3")
    url: str = request.getfixturevalue("redis_url")
    return Backend(url, namespace=f"tf-web-{uuid.uuid4().hex[:12]}")


def cleanup(backend: Backend) -> None:
    if backend.namespace:
        delete_redis_keys(backend.url, backend.namespace, backend.job_ids)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = make_backend(request.param, request, tmp_path)
    try:
        yield b
    finally:
        cleanup(b)


class Api:
    """The example's HTTP API, remembering every job id it was given.

    Requests go through ``clients`` httpx clients of ``connections`` pooled
    connections each, request ``i`` through client ``i % clients``: httpcore's
    pool does work in proportion to the connections times the requests
    waiting for one, so many small pools keep the test client from being
    the bottleneck, and a semaphore per client keeps its queue empty.
    """

    def __init__(
        self, stack: Stack, backend: Backend, *, clients: int = 1, connections: int = 10
    ) -> None:
        self.example = stack.example
        self.job_ids = backend.job_ids
        self.pool = [
            httpx.AsyncClient(
                base_url=stack.url,
                timeout=JOB_TIMEOUT + 10,
                # Drop idle connections before uvicorn does (after 5 s), so that a
                # request never goes out on a connection the server is closing.
                limits=httpx.Limits(max_connections=connections, keepalive_expiry=2.0),
                verify=False,  # plain HTTP on loopback: skip loading CA certificates per client
            )
            for _ in range(clients)
        ]
        self.slots = [anyio.Semaphore(connections) for _ in range(clients)]
        self.http = self.pool[0]

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.pool:
            await client.aclose()

    async def request(self, method: str, url: str, i: int = 0, **options: Any) -> httpx.Response:
        client, slot = self.pool[i % len(self.pool)], self.slots[i % len(self.pool)]
        async with slot:
            return await client.request(method, url, **options)

    async def submit(self, payload: dict[str, Any], i: int = 0) -> str:
        response = await self.request("POST", self.example.jobs_path, i, json=payload)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "pending"
        assert response.headers["location"] == f"{self.example.jobs_path}/{body['id']}"
        self.job_ids.add(body["id"])
        return str(body["id"])

    async def status(self, job_id: str, wait: float = 0, i: int = 0) -> dict[str, Any]:
        path = f"{self.example.jobs_path}/{job_id}"
        response = await self.request("GET", path, i, params={"wait": str(wait)})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["id"] == job_id
        return body

    async def outcome(self, job_id: str) -> dict[str, Any]:
        body = await self.status(job_id, wait=JOB_TIMEOUT)
        assert body["status"] != "pending", f"job {job_id} still pending after {JOB_TIMEOUT} s"
        return body

    async def queue(self) -> dict[str, int]:
        response = await self.http.get("/queue")
        assert response.status_code == 200, response.text
        counts: dict[str, int] = response.json()
        return counts


def summary(text: str) -> dict[str, Any]:
    """What the FastAPI example's ``summarize`` should answer, computed independently."""
    words = [w.strip(".,!?").lower() for w in text.split() if w.strip(".,!?").isalpha()]
    counts = Counter(words)
    top = sorted(counts, key=lambda w: (-counts[w], w))[:3]
    return {"words": len(words), "distinct": len(counts), "top": top}


def without_options(command: list[str]) -> list[str]:
    """``command`` without a leading ``python -m``, up to its first option."""
    if command[:1] == ["python"]:
        command = command[1:]
    if command[:1] == ["-m"]:
        command = command[1:]
    return list(itertools.takewhile(lambda arg: not arg.startswith("-"), command))


@pytest.mark.parametrize("example", [FASTAPI, AIOHTTP], ids=lambda e: e.name)
def test_the_readme_runs_what_these_tests_run(example: Example) -> None:
    readme = (example.directory / "README.md").read_text()
    commands = [line[2:].split() for line in readme.splitlines() if line.startswith("$ ")]
    documented = [without_options(c) for c in commands if c[0] != "curl"]
    assert documented == [
        without_options(example.worker_command()),
        without_options(example.server_command(0)),
    ]


async def send_unfit_summary(backend: Backend) -> str:
    """Send the FastAPI example's ``summarize`` arguments that do not fit; return the id."""
    options: dict[str, Any] = {"namespace": backend.namespace} if backend.namespace else {}
    producer = broker_from_url(backend.url, **options)

    @producer.actor(name="summarize", queue=FASTAPI.queue)
    async def stand_in(text: dict[str, int]) -> None:
        pass

    async with producer:
        message = await stand_in.send({"not": 1})
    backend.job_ids.add(message.id)
    return message.id


def stopped_cleanly(stack: Stack) -> None:
    server, worker = stack.stop()
    logs = stack.server.output()[-2000:] + stack.worker.output()[-2000:]
    assert worker == 0, logs
    if stack.example is FASTAPI:
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert server in (0, -signal.SIGTERM), logs
        assert "Application shutdown complete" in stack.server.output(), logs
    else:
        assert server == 0, logs


@pytest.mark.slow
async def test_fastapi_example(backend: Backend, tmp_path: Path) -> None:
    texts = [f"{'Alpha ' * n}beta, Beta! gamma." for n in range(1, 11)]
    with running(FASTAPI, backend.url, tmp_path, backend.namespace) as stack:
        async with Api(stack, backend) as api:
            with anyio.fail_after(JOB_TIMEOUT + 15):
                ids = [await api.submit({"text": text}) for text in texts]
                failing = await api.submit({"text": "  1234 -- 5678 "})
                assert len(set(ids)) == len(texts)

                for job_id, text in zip(ids, texts, strict=True):
                    body = await api.outcome(job_id)
                    assert body["status"] == "done", body
                    assert body["result"] == summary(text)
                    assert body["error"] is None
                assert summary(texts[0])["top"] == ["beta", "alpha", "gamma"]

                body = await api.outcome(failing)
                assert body["status"] == "failed"
                assert body["error"] == "EmptyText: the text has no words"
                assert body["result"] is None

                # Input the app refuses never reaches the broker.
                assert (await api.http.get("/jobs/not-an-id")).status_code == 422
                assert (await api.http.post("/jobs", json={"txt": "x"})).status_code == 422

                # A message the worker refuses before it runs shows as failed at once.
                refused = await send_unfit_summary(backend)
                body = await api.status(refused, wait=2)
                assert body["status"] == "failed", body
                assert body["error"].startswith("InvalidArguments: invalid_arguments: ")
                await wait_until_idle(api)
                assert await api.queue() == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 2}
        stopped_cleanly(stack)


@pytest.mark.slow
async def test_aiohttp_example(backend: Backend, tmp_path: Path) -> None:
    series = {f"sensor-{i}": [float(i), i + 1.0, i + 2.0] for i in range(10)}
    with running(AIOHTTP, backend.url, tmp_path, backend.namespace) as stack:
        async with Api(stack, backend) as api:
            with anyio.fail_after(JOB_TIMEOUT + 15):
                ids = {
                    name: await api.submit({"series": name, "values": values})
                    for name, values in series.items()
                }
                sent_at = time.monotonic()
                later = await api.submit(
                    {"series": "later", "values": [2, 4, 4, 4, 5, 5, 7, 9], "delay": 1.0}
                )
                empty = await api.submit({"series": "empty", "values": []})

                # Given a report sent with a delay, it waits in the broker, not in the app.
                assert (await api.status(later))["status"] == "pending"
                assert (await api.queue())["delayed"] == 1

                for name, job_id in ids.items():
                    body = await api.outcome(job_id)
                    assert body["status"] == "done", body
                    low = series[name][0]
                    assert body["result"] == {
                        "count": 3,
                        "mean": low + 1,
                        "median": low + 1,
                        "stdev": 1.0,
                        "low": low,
                        "high": low + 2,
                    }

                body = await api.outcome(empty)
                assert body == {
                    "id": empty,
                    "status": "failed",
                    "error": "StatisticsError: series 'empty' has no values",
                }

                body = await api.outcome(later)
                assert time.monotonic() - sent_at >= 0.9, "the delayed report ran early"
                assert body["result"]["mean"] == 5.0
                assert body["result"]["median"] == 4.5

                assert (await api.http.get("/reports/not-an-id")).status_code == 404
                assert (await api.http.post("/reports", json={"values": [1]})).status_code == 400
                assert (await api.http.post("/reports", content=b"{")).status_code == 400
                await wait_until_idle(api)
                assert await api.queue() == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
        stopped_cleanly(stack)


async def wait_until_idle(api: Api) -> None:
    """Poll the queue counts until nothing is ready, delayed or in flight (callers bound it)."""
    while True:
        counts = await api.queue()
        if counts["ready"] == counts["delayed"] == counts["in_flight"] == 0:
            return
        await anyio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("example", "broker"),
    [(FASTAPI, "sqlite"), (AIOHTTP, "redis")],
    ids=["fastapi-sqlite", "aiohttp-redis"],
)
async def test_a_thousand_concurrent_requests_lose_nothing(
    example: Example, broker: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    backend = make_backend(broker, request, tmp_path)
    request.addfinalizer(lambda: cleanup(backend))
    jobs = 1000

    def payload(i: int) -> dict[str, Any]:
        if example is FASTAPI:
            return {"text": "word " * (i % 50 + 1) + f"job{'x' * (i % 7)} end"}
        return {"series": f"s{i}", "values": [float(i), float(i + 2)]}

    def expected(i: int) -> Any:
        if example is FASTAPI:
            return summary(payload(i)["text"])
        return pytest.approx(
            {"count": 2, "mean": i + 1, "median": i + 1, "stdev": 2**0.5, "low": i, "high": i + 2}
        )

    ids: dict[int, str] = {}
    outcomes: dict[int, dict[str, Any]] = {}
    with running(example, backend.url, tmp_path, backend.namespace) as stack:
        async with Api(stack, backend, clients=10, connections=10) as api:

            async def submit(i: int) -> None:
                ids[i] = await api.submit(payload(i), i)

            async def collect(i: int) -> None:
                outcomes[i] = await api.status(ids[i], i=i)

            with anyio.fail_after(90):
                began = time.monotonic()
                # When: 1,000 requests at once, 100 of them on the wire at a time.
                async with anyio.create_task_group() as tg:
                    for i in range(jobs):
                        tg.start_soon(submit, i)
                sent = time.monotonic()
                await wait_until_idle(api)
                drained = time.monotonic()
                async with anyio.create_task_group() as tg:
                    for i in range(jobs):
                        tg.start_soon(collect, i)
                counts = await api.queue()
        print(
            f"{example.name} on {broker}: {jobs} POSTs in {sent - began:.2f} s, "
            f"queue drained after {drained - began:.2f} s, "
            f"{jobs} GETs in {time.monotonic() - drained:.2f} s"
        )
        stopped_cleanly(stack)

    # Expect: 1,000 distinct ids, and a result for every one of them.
    assert len(set(ids.values())) == jobs
    assert sorted(outcomes) == list(range(jobs))
    for i, body in outcomes.items():
        assert body["status"] == "done", body
        assert body["result"] == expected(i)
    assert counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
