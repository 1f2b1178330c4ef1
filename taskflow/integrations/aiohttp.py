"""aiohttp: the broker connects and closes with the app.

.. code-block:: python

    from aiohttp import web
    from taskflow.integrations.aiohttp import BROKER, cleanup_ctx

    async def signup(request: web.Request) -> web.Response:
        message = await send_welcome.send(await request.text())
        stats = await request.app[BROKER].stats("default")
        return web.json_response({"id": message.id, "queued": stats.ready})

    app = web.Application()
    app.cleanup_ctx.append(cleanup_ctx(broker))
    app.router.add_post("/signups", signup)

:func:`cleanup_ctx` connects the broker when the app starts, so a broker that
cannot be reached stops the app from starting instead of failing its first
request, stores it under the typed key :data:`BROKER`, and closes it when
the app cleans up, after the last request. Give each broker of an app a key
of its own (``web.AppKey("reports", RedisBroker)``) to keep its type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, overload

from aiohttp import web

from taskflow.broker import Broker

__all__ = ["BROKER", "cleanup_ctx", "get_broker"]

B = TypeVar("B", bound=Broker)

#: The app key the broker is kept under unless told otherwise.
BROKER = web.AppKey("taskflow_broker", Broker)


@overload
def cleanup_ctx(broker: Broker) -> Callable[[web.Application], AsyncIterator[None]]: ...
@overload
def cleanup_ctx(
    broker: B, *, key: web.AppKey[B]
) -> Callable[[web.Application], AsyncIterator[None]]: ...


def cleanup_ctx(
    broker: Broker, *, key: web.AppKey[Any] = BROKER
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return a cleanup context that connects ``broker`` at startup and closes it at cleanup.

    Use it as ``app.cleanup_ctx.append(cleanup_ctx(broker))``; handlers find
    the broker at ``request.app[key]`` (or :func:`get_broker`).

    Args:
        broker: The broker the app's handlers send with.
        key: The app key to keep it under (default :data:`BROKER`).
    """

    async def connected(app: web.Application) -> AsyncIterator[None]:
        if key in app:
            raise RuntimeError(f"app[{key!r}] already holds a broker")
        await broker.connect()
        app[key] = broker
        try:
            yield
        finally:
            await broker.close()

    return connected


@overload
def get_broker(request: web.Request) -> Broker: ...
@overload
def get_broker(request: web.Request, key: web.AppKey[B]) -> B: ...


def get_broker(request: web.Request, key: web.AppKey[Any] = BROKER) -> Any:
    """Return the broker of the app serving ``request`` (sub-apps see their parents').

    Same as ``request.config_dict[key]``, with a clearer error.

    Raises:
        RuntimeError: No :func:`cleanup_ctx` stored a broker under ``key``.
    """
    try:
        return request.config_dict[key]
    except KeyError:
        raise RuntimeError(
            f"no taskflow broker under {key!r}: add "
            "taskflow.integrations.aiohttp.cleanup_ctx(broker) to app.cleanup_ctx"
        ) from None
