"""The Django app config of ``taskflow.integrations.django``."""

from __future__ import annotations

from django.apps import AppConfig


class TaskflowConfig(AppConfig):
    """Add ``"taskflow.integrations.django"`` to ``INSTALLED_APPS``."""

    name = "taskflow.integrations.django"
    label = "taskflow"
    verbose_name = "taskflow"
