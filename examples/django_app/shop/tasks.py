"""The example's jobs: taskflow actors, and a task of Django's Tasks framework.

``python manage.py taskflow worker`` imports this module (every installed
app's ``tasks.py``) and runs them; the views import it to send.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from django.db.models import F

from taskflow.integrations.django import broker

from .models import Event, Order

if TYPE_CHECKING:
    from django_tasks import task
else:
    try:  # Django 6
        from django.tasks import task
    except ImportError:  # Django 5.2 with the django-tasks backport
        from django_tasks import task


@broker.actor(queue="orders")
def confirm_order(ref: str) -> None:
    """Confirm a committed order (sent with ``send_on_commit``: never for a rolled-back one)."""
    Order.objects.filter(ref=ref).update(confirmations=F("confirmations") + 1)
    Event.objects.create(kind="confirm", ref=ref, pid=os.getpid())


@broker.actor(queue="pings", store_results=True)
def ping(ref: str) -> str:
    """Answer a ping (sent with ``send_sync`` from a view)."""
    Event.objects.create(kind="ping", ref=ref, pid=os.getpid())
    return f"pong {ref}"


@task(queue_name="reports")
def build_report(n: int) -> dict[str, Any]:
    """A ``django.tasks`` task, run by a taskflow worker through ``TaskflowBackend``."""
    if n < 0:
        raise ValueError("n must not be negative")
    return {"n": n, "sum_of_squares": sum(i * i for i in range(n))}
