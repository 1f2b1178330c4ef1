"""The dashboard's ASGI app: routes, CSRF, read-only mode and the authentication hook."""

from __future__ import annotations

import hmac
import inspect
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from taskflow._inspection import STATES
from taskflow.broker import Broker
from taskflow.dashboard import _pages
from taskflow.dashboard._format import Formatter, age, iso, show_arguments

#: The cookie holding a browser's CSRF token; actions must echo it in ``X-CSRF-Token``.
CSRF_COOKIE = "taskflow_csrf"
CSRF_HEADER = "x-csrf-token"

Auth = Callable[[Request], "bool | Awaitable[bool]"]


class Dashboard:
    """The taskflow dashboard: an ASGI application showing and steering ``broker``'s queues.

    Mount it in FastAPI or Starlette (``app.mount("/tasks", Dashboard(broker))``),
    route a prefix to it from Django's ASGI application, wrap it for Flask
    with ``a2wsgi.ASGIMiddleware``, or run it alone with ``taskflow dashboard``.

    Every action (requeue, purge) is a POST that must carry the page's CSRF
    token (the ``taskflow_csrf`` cookie echoed in an ``X-CSRF-Token``
    header, as the pages' htmx requests do) and is confirmed in the browser
    first.

    Args:
        broker: The broker to show.
        read_only: Show no action, and answer every action request with 403.
        formatter: Turns a message's arguments into the text shown (default
            :func:`show_arguments`, the arguments as they are); replace it to
            mask secrets.
        auth: Called with each request before anything else; return False (or
            raise ``starlette.exceptions.HTTPException``) to refuse it with 403.
            May be async. For a host app's own login, pass ``middleware``
            instead, or mount the dashboard behind the host's middleware.
        middleware: Starlette middleware wrapped around the dashboard (an
            authentication middleware, for instance).
        refresh: Seconds between the pages' live updates.
    """

    def __init__(
        self,
        broker: Broker,
        read_only: bool = False,
        *,
        formatter: Formatter | None = None,
        auth: Auth | None = None,
        middleware: Sequence[Middleware] = (),
        refresh: float = 1.0,
    ) -> None:
        self.broker = broker
        self.read_only = read_only
        self.formatter = formatter or show_arguments
        self.auth = auth
        self.refresh = refresh
        #: (monotonic time, processed by every worker) samples for the throughput.
        self.samples: deque[tuple[float, int]] = deque(maxlen=600)
        self.templates = Environment(
            loader=PackageLoader("taskflow.dashboard", "templates"),
            autoescape=select_autoescape(default=True),
        )
        self.templates.globals.update(states=STATES, age=age, iso=iso)
        self.app = Starlette(routes=self._routes(), middleware=list(middleware))

    def _routes(self) -> list[Route | Mount]:
        page, act = self._page, self._action
        return [
            Route("/", page(_pages.queues), name="queues"),
            Route("/partials/queues", page(_pages.queues_rows)),
            Route("/queues/{queue}", page(_pages.queue), name="queue"),
            Route("/partials/queues/{queue}", page(_pages.queue_rows)),
            Route("/messages/{message_id}", page(_pages.message), name="message"),
            Route("/workers", page(_pages.workers), name="workers"),
            Route("/partials/workers", page(_pages.workers_rows)),
            Route("/schedules", page(_pages.schedules), name="schedules"),
            Route("/messages/{message_id}/requeue", act(_pages.requeue_one), methods=["POST"]),
            Route("/queues/{queue}/requeue", act(_pages.requeue_all), methods=["POST"]),
            Route("/queues/{queue}/purge-dead", act(_pages.purge_dead), methods=["POST"]),
            Mount("/static", StaticFiles(directory=Path(__file__).parent / "static")),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        await self.app(scope, receive, send)

    # -- plumbing -----------------------------------------------------------

    def _page(self, view: _pages.View) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            refused = await self._refused(request)
            if refused is not None:
                return refused
            await self.broker.connect()
            response = await view(self, request)
            if CSRF_COOKIE not in request.cookies:
                token = request.state.csrf
                response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict")
            return response

        return endpoint

    def _action(self, view: _pages.View) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            refused = await self._refused(request)
            if refused is not None:
                return refused
            if self.read_only:
                return PlainTextResponse("the dashboard is read-only", status_code=403)
            cookie = request.cookies.get(CSRF_COOKIE, "")
            header = request.headers.get(CSRF_HEADER, "")
            if not cookie or not hmac.compare_digest(cookie, header):
                return PlainTextResponse("missing or wrong CSRF token", status_code=403)
            await self.broker.connect()
            return await view(self, request)

        return endpoint

    async def _refused(self, request: Request) -> Response | None:
        request.state.csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        if self.auth is None:
            return None
        allowed = self.auth(request)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        return None if allowed else PlainTextResponse("forbidden", status_code=403)

    def render(self, request: Request, template: str, **context: Any) -> HTMLResponse:
        """Render ``template`` with the links and token every page needs."""
        prefix = request.scope.get("root_path", "").rstrip("/")
        html = self.templates.get_template(template).render(
            prefix=prefix,
            csrf=request.state.csrf,
            read_only=self.read_only,
            refresh=self.refresh,
            fmt=self.formatter,
            **context,
        )
        return HTMLResponse(html)

    def throughput(self, processed: int) -> float | None:
        """Messages per minute processed by the workers over the last five minutes."""
        now = time.monotonic()
        self.samples.append((now, processed))
        while self.samples and now - self.samples[0][0] > 300:
            self.samples.popleft()
        first_at, first = self.samples[0]
        if now - first_at < 1 or processed < first:
            return None
        return (processed - first) * 60 / (now - first_at)
