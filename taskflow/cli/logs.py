"""Log lines of every ``taskflow`` process, set up without typer or the application.

The supervisor of ``taskflow worker`` imports this module and not
:mod:`taskflow.cli.runtime`, so that it stays a small process.
"""

from __future__ import annotations

import logging

from taskflow._redact import protect

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send log records to stderr: text lines with the pid, level and logger, or JSON objects.

    The text format needs nothing but :mod:`logging`; the JSON one is
    :class:`taskflow.logs.JsonFormatter`, imported only then.
    """
    if log_format == "text":
        logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)
        for handler in logging.getLogger().handlers:
            # Secrets masked in every logger's records (see taskflow/_redact.py).
            protect(handler)
        return
    from taskflow.logs import configure

    configure(level, log_format)
