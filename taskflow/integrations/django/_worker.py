"""What ``manage.py taskflow`` hands the CLI: Django set up, every app's ``tasks.py`` imported."""

from __future__ import annotations

import django
from django.apps import apps
from django.utils.module_loading import autodiscover_modules

from taskflow.broker import Broker

SPEC = "taskflow.integrations.django._worker:load"
"""The ``MODULE:BROKER`` spec of the project's broker, for the CLI and its worker children."""


def load() -> Broker:
    """Set Django up (``DJANGO_SETTINGS_MODULE``), import each installed app's ``tasks.py``."""
    if not apps.ready:
        django.setup()
    from taskflow.integrations.django._config import get_broker

    broker = get_broker()
    autodiscover_modules("tasks")
    return broker
