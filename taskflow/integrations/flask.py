"""Flask: a broker built from the app's config, ``@ext.actor``, and ``flask taskflow worker``.

.. code-block:: python

    from flask import Flask
    from taskflow.integrations.flask import Taskflow

    app = Flask(__name__)
    app.config["TASKFLOW_BROKER_URL"] = "redis://127.0.0.1:6379/0"
    tasks = Taskflow(app)               # or Taskflow() and later tasks.init_app(app)

    @tasks.actor(store_results=True)
    def add(x: int, y: int) -> int:
        return x + y

    @app.post("/add")
    def add_view() -> dict[str, int]:
        message = add.send_sync(1, 2)   # a sync view: send_sync, result_sync
        return {"sum": message.result_sync(timeout=5)}

``flask --app myapp taskflow worker`` runs workers (every flag of ``taskflow
worker``); ``flask taskflow queues`` and ``flask taskflow dlq`` inspect the
queues. The worker processes load the app as ``flask`` does (``--app``, or
``FLASK_APP``), so the actors its modules declare are known.

Config keys: ``TASKFLOW_BROKER_URL`` (default ``$TASKFLOW_BROKER_URL``, else
``sqlite:///taskflow.sqlite3``), ``TASKFLOW_RESULTS`` (default ``True``),
``TASKFLOW_MIDDLEWARE`` (a list of middleware; default the standard stack)
and ``TASKFLOW_BROKER_OPTIONS`` (more keyword arguments of the broker).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import click
from flask import Flask, current_app, has_app_context
from flask.cli import ScriptInfo

from taskflow._urls import DEFAULT_URL, broker_from_url
from taskflow.broker import Broker
from taskflow.brokers.memory import MemoryBroker
from taskflow.integrations._commands import run

if TYPE_CHECKING:
    from taskflow.actor import Actor
    from taskflow.broker import _ActorDecorator

__all__ = ["Taskflow"]

P = ParamSpec("P")
R = TypeVar("R")

EXTENSION = "taskflow"
SPEC = "taskflow.integrations.flask:worker_broker"
"""The ``MODULE:BROKER`` spec the CLI's commands and worker children load the broker with."""


class Taskflow:
    """The taskflow extension: ``Taskflow(app)``, or ``Taskflow()`` then :meth:`init_app`.

    Args:
        app: The app whose config builds the broker.
        broker: A broker to use instead of building one from the config.
    """

    def __init__(self, app: Flask | None = None, *, broker: Broker | None = None) -> None:
        self._given = broker
        self._broker = broker
        self._pending: MemoryBroker | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build the broker from ``app.config``, register the extension and ``flask taskflow``.

        Actors declared with :meth:`actor` before this call move to the broker built here.

        Raises:
            TypeError: An actor declared earlier uses an option this broker's middleware lacks.
        """
        if self._broker is None:
            self._broker = build_broker(app.config)
            if self._pending is not None:
                _adopt(self._pending, self._broker)
                self._pending = None
        app.extensions[EXTENSION] = self
        app.cli.add_command(taskflow_command)

    @property
    def broker(self) -> Broker:
        """The broker built from the app's config.

        Raises:
            RuntimeError: :meth:`init_app` was not called yet.
        """
        if self._broker is None:
            raise RuntimeError("Taskflow has no broker yet: call init_app(app) first")
        return self._broker

    @overload
    def actor(self, fn: Callable[P, Awaitable[R]], /) -> Actor[P, R]: ...
    @overload
    def actor(self, fn: Callable[P, R], /) -> Actor[P, R]: ...
    @overload
    def actor(
        self,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        **options: Any,
    ) -> _ActorDecorator: ...

    def actor(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Declare an actor on the broker, as ``@broker.actor`` does (before ``init_app`` too)."""
        target = self._broker
        if target is None:
            if self._pending is None:
                self._pending = MemoryBroker(results=True)
            target = self._pending
        if fn is not None and not options:
            return target.actor(fn)
        decorate = target.actor(**options)
        return decorate(fn) if fn is not None else decorate


def build_broker(config: Mapping[str, Any]) -> Broker:
    """Build a broker from a Flask config (the ``TASKFLOW_*`` keys)."""
    url = config.get("TASKFLOW_BROKER_URL") or os.environ.get("TASKFLOW_BROKER_URL") or DEFAULT_URL
    options = dict(config.get("TASKFLOW_BROKER_OPTIONS") or {})
    middleware = config.get("TASKFLOW_MIDDLEWARE")
    return broker_from_url(
        url,
        results=config.get("TASKFLOW_RESULTS", True),
        middleware=None if middleware is None else list(middleware),
        **options,
    )


def _adopt(pending: Broker, broker: Broker) -> None:
    """Move the actors declared on ``pending`` to ``broker``, checking their options."""
    for name, actor in pending.actors.items():
        unknown = sorted(set(actor.options) - broker.actor_options)
        if unknown:
            raise TypeError(
                f"actor {name!r} uses option(s) {', '.join(map(repr, unknown))} "
                "that the app's broker does not accept"
            )
        if name in broker.actors:
            raise ValueError(f"an actor named {name!r} is already declared")
        actor.broker = broker
        broker.actors[name] = actor


def worker_broker() -> Broker:
    """The app's broker, for the CLI and worker processes: the current app's, or the one ``flask`` would load."""
    if has_app_context():
        app = current_app
    else:
        app = ScriptInfo(app_import_path=os.environ.get("FLASK_APP")).load_app()
    extension = app.extensions.get(EXTENSION)
    if not isinstance(extension, Taskflow):
        raise RuntimeError(f"the Flask app {app.name!r} has no Taskflow extension")
    return extension.broker


@click.command(
    "taskflow",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def taskflow_command(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Run taskflow workers and inspect queues on the app's broker (`flask taskflow --help`)."""
    info = ctx.ensure_object(ScriptInfo)
    if info.app_import_path:
        os.environ["FLASK_APP"] = info.app_import_path  # for the worker processes
    with info.load_app().app_context():
        status = run(list(args), spec=SPEC, prog_name="flask taskflow")
    ctx.exit(status)
