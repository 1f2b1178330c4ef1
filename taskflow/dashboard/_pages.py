"""The dashboard's pages and actions, one function each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from taskflow._inspection import STATES, MessageInfo, State
from taskflow.errors import ResultTimeout

if TYPE_CHECKING:
    from taskflow.dashboard._app import Dashboard

View = Callable[["Dashboard", Request], Awaitable[Response]]
PAGE_SIZE = 50


async def _queue_rows(dash: Dashboard) -> list[tuple[str, Any]]:
    broker = dash.broker
    return [(name, await broker.stats(name)) for name in await broker.known_queues()]


async def _throughput(dash: Dashboard) -> float | None:
    try:
        workers = await dash.broker.workers()
    except NotImplementedError:
        return None
    return dash.throughput(sum(w.processed for w in workers))


async def queues(dash: Dashboard, request: Request) -> Response:
    """Every queue with its ready, delayed, in-flight and dead counts."""
    rows, rate = await _queue_rows(dash), await _throughput(dash)
    return dash.render(request, "queues.html", rows=rows, rate=rate, page="queues")


async def queues_rows(dash: Dashboard, request: Request) -> Response:
    """The rows of the queues table (the live update)."""
    rows, rate = await _queue_rows(dash), await _throughput(dash)
    return dash.render(request, "_queues_rows.html", rows=rows, rate=rate)


def _state_and_page(request: Request) -> tuple[State, int]:
    state = request.query_params.get("state", "ready")
    if state not in STATES:
        state = "ready"
    try:
        number = max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        number = 1
    return state, number  # type: ignore[return-value]


async def _listing(dash: Dashboard, request: Request) -> dict[str, Any]:
    queue = request.path_params["queue"]
    state, number = _state_and_page(request)
    offset = (number - 1) * PAGE_SIZE
    try:
        found = await dash.broker.browse(queue, state, PAGE_SIZE + 1, offset)
        unavailable = ""
    except NotImplementedError as exc:
        found, unavailable = [], str(exc)
    return {
        "queue": queue,
        "state": state,
        "number": number,
        "messages": found[:PAGE_SIZE],
        "more": len(found) > PAGE_SIZE,
        "stats": await dash.broker.stats(queue),
        "unavailable": unavailable,
    }


async def queue(dash: Dashboard, request: Request) -> Response:
    """One queue's messages in one state, a page at a time."""
    return dash.render(request, "queue.html", page="queues", **await _listing(dash, request))


async def queue_rows(dash: Dashboard, request: Request) -> Response:
    """The rows of a queue's table (the live update)."""
    return dash.render(request, "_queue_rows.html", **await _listing(dash, request))


async def _result(dash: Dashboard, message_id: str) -> Any:
    backend = dash.broker.results
    if backend is None:
        return None
    try:
        return await backend.fetch(message_id, 0)
    except ResultTimeout:
        return None


async def message(dash: Dashboard, request: Request) -> Response:
    """One message: arguments, options, retries, deliveries, lease, eta, result or traceback."""
    message_id = request.path_params["message_id"]
    try:
        info: MessageInfo | None = await dash.broker.get_message(message_id)
    except NotImplementedError:
        info = None
    result = await _result(dash, message_id)
    if info is None and result is None:
        return dash.render(request, "missing.html", message_id=message_id, page="queues")
    return dash.render(
        request, "message.html", info=info, result=result, message_id=message_id, page="queues"
    )


async def workers(dash: Dashboard, request: Request) -> Response:
    """The live workers."""
    return dash.render(request, "workers.html", workers=await _workers(dash), page="workers")


async def workers_rows(dash: Dashboard, request: Request) -> Response:
    """The rows of the workers table (the live update)."""
    return dash.render(request, "_workers_rows.html", workers=await _workers(dash))


async def _workers(dash: Dashboard) -> list[Any]:
    try:
        return await dash.broker.workers()
    except NotImplementedError:
        return []


async def schedules(dash: Dashboard, request: Request) -> Response:
    """The cron schedules with their last and next fire times."""
    rows = [(s, await s.last_fire()) for s in dash.broker.schedules.values()]
    return dash.render(request, "schedules.html", rows=rows, page="schedules")


def _redirect(request: Request, path: str) -> Response:
    prefix = request.scope.get("root_path", "").rstrip("/")
    response = PlainTextResponse("done")
    response.headers["HX-Redirect"] = prefix + path
    return response


async def requeue_one(dash: Dashboard, request: Request) -> Response:
    """Move one dead letter back to its queue."""
    message_id = request.path_params["message_id"]
    info = await dash.broker.get_message(message_id)
    if info is None or info.state != "dead":
        return PlainTextResponse("no such dead letter", status_code=404)
    await dash.broker.requeue_dead(info.queue, [message_id])
    return _redirect(request, f"/queues/{info.queue}?state=dead")


async def requeue_all(dash: Dashboard, request: Request) -> Response:
    """Move every dead letter of a queue back to it."""
    queue = request.path_params["queue"]
    await dash.broker.requeue_dead(queue)
    return _redirect(request, f"/queues/{queue}?state=dead")


async def purge_dead(dash: Dashboard, request: Request) -> Response:
    """Delete every dead letter of a queue."""
    queue = request.path_params["queue"]
    await dash.broker.purge_dead(queue)
    return _redirect(request, f"/queues/{queue}?state=dead")
