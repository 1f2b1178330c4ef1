"""taskflow.integrations.aiohttp in-process: the cleanup context, app keys and sub-apps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from taskflow import BrokerUnavailable
from taskflow.integrations.aiohttp import BROKER, cleanup_ctx, get_broker
from tests.integrations.brokers import CountingBroker

pytestmark = pytest.mark.anyio

REPORTS = web.AppKey("reports", CountingBroker)


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``app`` on a loopback port; startup and cleanup run as under ``run_app``."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        await runner.cleanup()


def make_app(broker: CountingBroker) -> web.Application:
    @broker.actor(queue="emails")
    async def welcome(email: str) -> None: ...

    async def signup(request: web.Request) -> web.Response:
        message = await welcome.send(request.query["email"])
        stats = await request.app[BROKER].stats("emails")
        return web.json_response({"id": message.id, "ready": stats.ready, "broker": id(broker)})

    app = web.Application()
    app.cleanup_ctx.append(cleanup_ctx(broker))
    app.router.add_post("/signups", signup)
    return app


async def test_cleanup_ctx_connects_at_startup_and_closes_at_cleanup() -> None:
    broker = CountingBroker()
    app = make_app(broker)
    assert BROKER not in app
    async with serving(app) as client:
        assert (broker.connects, broker.closes) == (1, 0)
        assert app[BROKER] is broker
        first = (await client.post("/signups", params={"email": "a@example.com"})).json()
        second = (await client.post("/signups", params={"email": "b@example.com"})).json()
        assert first["broker"] == second["broker"] == id(broker)
        assert (first["ready"], second["ready"]) == (1, 2)
        assert broker.connects == 1
    assert (broker.connects, broker.closes) == (1, 1)


async def test_an_unreachable_broker_stops_the_app_from_starting() -> None:
    broker = CountingBroker(fail_connect=True)
    runner = web.AppRunner(make_app(broker))
    with pytest.raises(BrokerUnavailable):
        await runner.setup()
    await runner.cleanup()
    assert broker.closes == 0


async def test_sub_apps_and_typed_keys() -> None:
    jobs, reports = CountingBroker(), CountingBroker()

    async def index(request: web.Request) -> web.Response:
        own: CountingBroker = get_broker(request, REPORTS)
        return web.json_response([id(get_broker(request)), id(own)])

    admin = web.Application()
    admin.router.add_get("/", index)
    app = web.Application()
    app.cleanup_ctx.append(cleanup_ctx(jobs))
    app.cleanup_ctx.append(cleanup_ctx(reports, key=REPORTS))
    app.add_subapp("/admin", admin)
    async with serving(app) as client:
        assert (await client.get("/admin/")).json() == [id(jobs), id(reports)]
    assert (jobs.closes, reports.closes) == (1, 1)


async def test_get_broker_says_what_is_missing() -> None:
    request = make_mocked_request("GET", "/", app=web.Application())
    with pytest.raises(RuntimeError, match=r"taskflow_broker.*app\.cleanup_ctx"):
        get_broker(request)


async def test_one_key_holds_one_broker() -> None:
    first, second = CountingBroker(), CountingBroker()
    app = web.Application()
    app.cleanup_ctx.append(cleanup_ctx(first))
    app.cleanup_ctx.append(cleanup_ctx(second))
    runner = web.AppRunner(app)
    with pytest.raises(RuntimeError, match="already holds a broker"):
        await runner.setup()
    await runner.cleanup()
    assert app[BROKER] is first
    assert (first.connects, first.closes) == (1, 1)
    assert second.connects == 0


async def test_two_apps_in_one_process_each_see_their_own_broker() -> None:
    one, two = CountingBroker(), CountingBroker()
    async with serving(make_app(one)) as c1, serving(make_app(two)) as c2:
        r1 = (await c1.post("/signups", params={"email": "a@example.com"})).json()
        r2 = (await c2.post("/signups", params={"email": "b@example.com"})).json()
    assert (r1["broker"], r2["broker"]) == (id(one), id(two))
    assert (await one.stats("emails")).ready == 1
    assert (await two.stats("emails")).ready == 1
