"""FastAPI (or any Starlette app): the broker connects and closes with the app.

.. code-block:: python

    from fastapi import FastAPI
    from taskflow.integrations.fastapi import BrokerDep, lifespan

    app = FastAPI(lifespan=lifespan(broker))

    @app.post("/signups")
    async def signup(email: str, broker: BrokerDep) -> dict[str, str]:
        message = await send_welcome.send(email)
        stats = await broker.stats("default")
        return {"id": message.id, "queued": str(stats.ready)}

:func:`lifespan` connects the broker at startup, so a broker that cannot be
reached stops the app from starting instead of failing its first request,
and closes it after the server has served its last request. In between the
broker is on ``app.state``, where :func:`get_broker` (or the
:data:`BrokerDep` annotation) finds it for handlers, and where a test can
put another one. To run other startup code too, enter it from your own
lifespan::

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(broker)(app), open_database() as db:
            app.state.db = db
            yield
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated

from fastapi import Depends
from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from taskflow.broker import Broker

__all__ = ["STATE_NAME", "BrokerDep", "broker_dependency", "get_broker", "lifespan"]

#: The ``app.state`` attribute that holds the broker unless told otherwise.
STATE_NAME = "taskflow_broker"


def lifespan(
    broker: Broker, *, name: str = STATE_NAME
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """Return a lifespan that connects ``broker`` at startup and closes it at shutdown.

    Use it as ``FastAPI(lifespan=lifespan(broker))``, or enter
    ``lifespan(broker)(app)`` from a lifespan of your own.

    Args:
        broker: The broker the app's handlers send with.
        name: The ``app.state`` attribute to keep it under; give each broker
            of an app its own.
    """

    @asynccontextmanager
    async def connected(app: Starlette) -> AsyncIterator[None]:
        state = app.state
        if getattr(state, name, None) is not None:
            raise RuntimeError(f"app.state.{name} already holds a broker")
        await broker.connect()
        setattr(state, name, broker)
        try:
            yield
        finally:
            delattr(state, name)
            await broker.close()

    return connected


async def get_broker(connection: HTTPConnection) -> Broker:
    """Return the app's broker: use as ``Depends(get_broker)`` in HTTP and WebSocket handlers.

    A coroutine only so that FastAPI calls it on the event loop: it runs a
    plain function dependency in a worker thread, a hop per request.

    Raises:
        RuntimeError: The app was not created with :func:`lifespan`, or is not running.
    """
    return _broker_on(connection, STATE_NAME)


def broker_dependency(name: str) -> Callable[[HTTPConnection], Awaitable[Broker]]:
    """Return a dependency like :func:`get_broker` for the broker kept under ``app.state.<name>``."""

    async def dependency(connection: HTTPConnection) -> Broker:
        return _broker_on(connection, name)

    return dependency


def _broker_on(connection: HTTPConnection, name: str) -> Broker:
    broker = getattr(connection.app.state, name, None)
    if not isinstance(broker, Broker):
        raise RuntimeError(
            f"no taskflow broker on app.state.{name}: create the app with "
            "lifespan=taskflow.integrations.fastapi.lifespan(broker), and run it"
        )
    return broker


#: Annotate a handler parameter ``broker: BrokerDep`` to receive the app's broker.
BrokerDep = Annotated[Broker, Depends(get_broker)]
