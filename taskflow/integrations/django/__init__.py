"""Django: the project's broker from settings, workers as a management command, a Tasks backend.

.. code-block:: python

    # settings.py
    INSTALLED_APPS = [..., "taskflow.integrations.django"]
    TASKFLOW = {
        "BROKER_URL": "redis://127.0.0.1:6379/0",  # default: $TASKFLOW_BROKER_URL, else SQLite
        "RESULTS": True,            # keep results on the same server (default)
        "MIDDLEWARE": None,         # None: the default stack; or middleware / dotted paths
        "OPTIONS": {"namespace": "myproject"},  # more keyword arguments of the broker
    }

    # myapp/tasks.py: imported by the worker
    from taskflow.integrations.django import broker

    @broker.actor
    def send_welcome(user_id: int) -> None: ...

    # myapp/views.py
    def signup(request):
        with transaction.atomic():
            user = User.objects.create(...)
            send_welcome.send_on_commit(user.id)  # only once the user is committed
        ...

``python manage.py taskflow worker`` runs workers with every flag of
``taskflow worker``; ``manage.py taskflow queues`` and ``manage.py taskflow
dlq list --queue default`` inspect the queues. Each installed app's
``tasks.py`` is imported by the worker (and by those commands).

``TASKS = {"default": {"BACKEND": "taskflow.integrations.django.TaskflowBackend"}}``
runs ``@task`` functions of Django's Tasks framework (Django 6's
``django.tasks``, or the ``django-tasks`` backport on Django 5.2) on taskflow
workers, with their ``TaskResult`` status and return value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskflow.broker import Broker
    from taskflow.integrations.django._backend import TaskflowBackend

    broker: Broker
    """The project's broker (built from ``settings.TASKFLOW`` on first use)."""

__all__ = ["TaskflowBackend", "broker", "get_broker"]


def get_broker() -> Broker:
    """The project's broker, built from ``settings.TASKFLOW`` on first use."""
    from taskflow.integrations.django._config import get_broker

    return get_broker()


def __getattr__(name: str) -> Any:
    if name == "broker":
        return get_broker()
    if name == "TaskflowBackend":
        from taskflow.integrations.django._backend import TaskflowBackend

        return TaskflowBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
