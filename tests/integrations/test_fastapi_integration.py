"""taskflow.integrations.fastapi in-process: the lifespan, app.state and the dependency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, WebSocket
from starlette.types import Message, Scope

from taskflow import Broker, BrokerUnavailable
from taskflow.integrations.fastapi import (
    STATE_NAME,
    BrokerDep,
    broker_dependency,
    get_broker,
    lifespan,
)
from tests.integrations.brokers import CountingBroker

pytestmark = pytest.mark.anyio

ReportsDep = Annotated[Broker, Depends(broker_dependency("reports"))]


def make_app(broker: CountingBroker) -> FastAPI:
    @broker.actor(queue="emails")
    async def welcome(email: str) -> None: ...

    app = FastAPI(lifespan=lifespan(broker))

    @app.post("/signups")
    async def signup(email: str, broker: BrokerDep) -> dict[str, object]:
        message = await welcome.send(email)
        stats = await broker.stats("emails")
        return {"id": message.id, "ready": stats.ready, "broker": id(broker)}

    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


async def test_lifespan_connects_at_startup_and_closes_at_shutdown() -> None:
    broker = CountingBroker()
    app = make_app(broker)
    async with app.router.lifespan_context(app):
        assert (broker.connects, broker.closes) == (1, 0)
        assert getattr(app.state, STATE_NAME) is broker
        async with client(app) as c:
            first = (await c.post("/signups", params={"email": "a@example.com"})).json()
            second = (await c.post("/signups", params={"email": "b@example.com"})).json()
        assert first["broker"] == second["broker"] == id(broker)
        assert (first["ready"], second["ready"]) == (1, 2)
        assert broker.connects == 1  # handlers reused the connection the lifespan opened
    assert (broker.connects, broker.closes) == (1, 1)
    assert not hasattr(app.state, STATE_NAME)


async def test_an_unreachable_broker_stops_the_app_from_starting() -> None:
    broker = CountingBroker(fail_connect=True)
    app = make_app(broker)
    with pytest.raises(BrokerUnavailable):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started without its broker")
    assert not hasattr(app.state, STATE_NAME)


async def test_without_the_lifespan_the_dependency_says_what_is_missing() -> None:
    broker = CountingBroker()
    app = FastAPI()

    @app.get("/")
    async def index(broker: BrokerDep) -> str:
        return repr(broker)

    async with client(app) as c:
        with pytest.raises(RuntimeError, match=r"app\.state\.taskflow_broker.*lifespan="):
            await c.get("/")
    assert broker.connects == 0


async def test_two_apps_in_one_process_each_see_their_own_broker() -> None:
    one, two = CountingBroker(), CountingBroker()
    app_one, app_two = make_app(one), make_app(two)
    async with app_one.router.lifespan_context(app_one), app_two.router.lifespan_context(app_two):
        async with client(app_one) as c1, client(app_two) as c2:
            r1 = (await c1.post("/signups", params={"email": "a@example.com"})).json()
            r2 = (await c2.post("/signups", params={"email": "b@example.com"})).json()
    assert (r1["broker"], r2["broker"]) == (id(one), id(two))
    assert (await one.stats("emails")).ready == 1
    assert (await two.stats("emails")).ready == 1


async def test_composes_with_the_apps_own_lifespan_and_a_second_broker() -> None:
    jobs, reports = CountingBroker(), CountingBroker()
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(jobs)(app), lifespan(reports, name="reports")(app):
            events.append("started")
            yield
            events.append("stopping")

    app = FastAPI(lifespan=app_lifespan)

    @app.get("/")
    async def index(jobs: BrokerDep, reports: ReportsDep) -> list[int]:
        return [id(jobs), id(reports)]

    async with app.router.lifespan_context(app):
        assert jobs.connected and reports.connected
        async with client(app) as c:
            assert (await c.get("/")).json() == [id(jobs), id(reports)]
    assert events == ["started", "stopping"]
    assert (jobs.closes, reports.closes) == (1, 1)


async def test_one_name_holds_one_broker() -> None:
    app = FastAPI()
    first, second = CountingBroker(), CountingBroker()
    async with lifespan(first)(app):
        with pytest.raises(RuntimeError, match="already holds a broker"):
            async with lifespan(second)(app):
                pass
        assert getattr(app.state, STATE_NAME) is first
    assert second.connects == 0


async def test_websocket_handlers_get_the_broker_too() -> None:
    broker = CountingBroker()
    app = FastAPI(lifespan=lifespan(broker))

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, broker: Annotated[Broker, Depends(get_broker)]) -> None:
        await websocket.accept()
        await websocket.send_text(type(broker).__name__)
        await websocket.close()

    # A WebSocket session spoken in raw ASGI: httpx has no WebSocket client.
    incoming: list[Message] = [
        {"type": "websocket.connect"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(event: Message) -> None:
        sent.append(event)

    scope: Scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [],
        "scheme": "ws",
        "server": ("testserver", 80),
        "subprotocols": [],
    }
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
    assert [e["type"] for e in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "CountingBroker"
    assert not broker.connected
