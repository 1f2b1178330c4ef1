"""Settings of the example project: taskflow as an installed app, a Tasks backend on taskflow.

The environment chooses the servers, so the same project runs on the
embedded SQLite broker (the default, nothing to install) or on Redis:

* ``TASKFLOW_BROKER_URL``: the broker, default ``sqlite:///taskflow.sqlite3``;
* ``TASKFLOW_NAMESPACE``: a Redis key prefix of this project's own;
* ``DJANGO_DB_PATH``: the project's own SQLite database, default ``db.sqlite3``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "taskflow.integrations.django",
    "shop",
]

TASKFLOW_OPTIONS: dict[str, Any] = {}
if namespace := os.environ.get("TASKFLOW_NAMESPACE"):
    TASKFLOW_OPTIONS["namespace"] = namespace

TASKFLOW = {
    "BROKER_URL": os.environ.get("TASKFLOW_BROKER_URL", "sqlite:///taskflow.sqlite3"),
    "RESULTS": True,
    "OPTIONS": TASKFLOW_OPTIONS,
}

# Django's Tasks framework, run by taskflow workers (Django 6's django.tasks,
# or the django-tasks backport on Django 5.2).
TASKS = {
    "default": {
        "BACKEND": "taskflow.integrations.django.TaskflowBackend",
        "QUEUES": ["default", "reports"],
    }
}

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
MIDDLEWARE: list[str] = []

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {
            # Web threads and worker threads write at once: wait for the lock,
            # take it when the transaction begins.
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
