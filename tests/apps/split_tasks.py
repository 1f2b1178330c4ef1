"""Actors of :mod:`tests.apps.split_broker`'s broker, in another module."""

from __future__ import annotations

from tests.apps.split_broker import broker


@broker.actor(queue="reports")
async def report(name: str) -> None:
    pass
