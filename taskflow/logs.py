"""Log formats for workers: the default text lines, or one JSON object per line.

``taskflow worker --log-format json`` uses :class:`JsonFormatter`; any
program can use it through :mod:`logging.config`::

    logging.config.dictConfig({
        "version": 1,
        "formatters": {"json": {"()": "taskflow.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"level": "INFO", "handlers": ["stderr"]},
    })

Each line has ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
``process``, and ``message_id``, ``actor`` and ``queue`` while a message is
being processed in the task or thread that logs (read from
:func:`taskflow.middleware.current_delivery`), plus ``exception`` when the
record carries a traceback and whatever the caller passed with ``extra=``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from taskflow._redact import protect
from taskflow.middleware.current_message import current_delivery

#: The text format of ``--log-format text``.
TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON object."""
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        delivery = current_delivery()
        if delivery is not None:
            message = delivery.message
            entry.update(message_id=message.id, actor=message.actor, queue=message.queue)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            # exc_text when a filter already formatted (and masked) the traceback
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "info", log_format: str = "text") -> None:
    """Send log records to stderr as text lines or JSON objects, replacing other handlers.

    Args:
        level: The name of the lowest level logged.
        log_format: ``"text"`` or ``"json"``.

    Raises:
        ValueError: An unknown format.
    """
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif log_format == "text":
        formatter = logging.Formatter(TEXT_FORMAT)
    else:
        raise ValueError(f"unknown log format {log_format!r}: use 'text' or 'json'")
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    protect(handler)  # secrets masked in every logger's records, the application's too
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
