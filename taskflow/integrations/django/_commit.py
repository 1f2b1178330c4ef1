"""``actor.send_on_commit``: send once the current database transaction commits."""

from __future__ import annotations

from collections.abc import Callable

from django.db import transaction


def on_commit(send: Callable[[], object], using: str | None = None) -> None:
    """Run ``send`` after the transaction on ``using`` commits (at once outside a transaction).

    Django drops the callback when the transaction rolls back, so nothing is sent then.
    """
    transaction.on_commit(send, using=using)
