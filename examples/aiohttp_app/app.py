"""The HTTP side of the aiohttp example: ``python -m examples.aiohttp_app.app --port 8080``.

* ``POST /reports`` with ``{"series": "...", "values": [...], "delay": 0}``
  sends a ``build_report`` message (to run ``delay`` seconds from now) and
  answers 202 with the report's id (the message id) at once;
* ``GET /reports/{id}`` answers its status: ``pending`` (no outcome yet:
  queued, delayed, running or waiting for a retry), ``done`` with the
  report, or ``failed`` with the error that ended it for good. ``?wait=S``
  waits up to S seconds for an outcome before answering ``pending``;
* ``GET /queue`` counts the queue's messages.

Outcomes are read from the broker's result store, where they are kept for an
hour (the actor's ``result_ttl``); an id that store does not know, because
it was never issued or its result expired, reads as ``pending`` too.
"""

from __future__ import annotations

import argparse
import logging
from typing import Annotated, Any

import msgspec
from aiohttp import web

from taskflow import ResultTimeout
from taskflow.integrations.aiohttp import BROKER, cleanup_ctx

from .tasks import QUEUE, broker, build_report

#: Message ids: 26 characters of Crockford base32.
JOB_ID = "[0-9A-HJKMNP-TV-Z]{26}"
MAX_WAIT = 30.0

routes = web.RouteTableDef()


class NewReport(msgspec.Struct, forbid_unknown_fields=True):
    series: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    values: Annotated[list[float], msgspec.Meta(max_length=100_000)]
    delay: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0


_new_report = msgspec.json.Decoder(NewReport)


def job(job_id: str, status: str, **fields: Any) -> web.Response:
    return web.json_response({"id": job_id, "status": status, **fields})


@routes.post("/reports")
async def submit(request: web.Request) -> web.Response:
    try:
        new = _new_report.decode(await request.read())
    except msgspec.DecodeError as exc:  # ValidationError included
        raise web.HTTPBadRequest(text=str(exc)) from None
    message = await build_report.send_with_options(args=(new.series, new.values), delay=new.delay)
    response = job(message.id, "pending")
    response.set_status(202)
    response.headers["Location"] = f"/reports/{message.id}"
    return response


@routes.get(f"/reports/{{job_id:{JOB_ID}}}")
async def status(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    try:
        wait = min(max(float(request.query.get("wait", 0)), 0.0), MAX_WAIT)
    except ValueError:
        raise web.HTTPBadRequest(text="wait must be a number of seconds") from None
    results = request.app[BROKER].results
    if results is None:
        raise web.HTTPInternalServerError(text="the broker keeps no results")
    try:
        record = await results.fetch(job_id, timeout=wait)
    except ResultTimeout:
        return job(job_id, "pending")
    if record.ok:
        return job(job_id, "done", result=record.value)
    return job(job_id, "failed", error=f"{record.error_type}: {record.error}")


@routes.get("/queue")
async def queue(request: web.Request) -> web.Response:
    stats = await request.app[BROKER].stats(QUEUE)
    return web.json_response(stats._asdict())


def create_app(argv: list[str] | None = None) -> web.Application:
    """Build the app (``argv`` is for ``python -m aiohttp.web ...:create_app``)."""
    app = web.Application()
    app.cleanup_ctx.append(cleanup_ctx(broker))
    app.add_routes(routes)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="The aiohttp example app.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    web.run_app(create_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
