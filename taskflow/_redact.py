"""Secrets masked out of the exception text taskflow writes.

An actor that fails with a database URL in its error (drivers do this:
``could not connect to postgresql://app:hunter2@db/app``) would otherwise
put the password into the worker's log line, the dead-letter reason and the
traceback stored as its result. :func:`redact` masks, wherever taskflow
writes exception text:

* the password of a URL (``scheme://user:***@host``);
* the value of a ``password=``, ``token: ``, ``api_key=``... pair, quoted or not;
* ``Bearer`` / ``Basic`` credentials;
* tokens with a known shape (AWS access key ids, GitHub, Slack and Stripe
  tokens, JSON Web Tokens).

It is used by :func:`taskflow.middleware.retries.describe` (dead-letter
reasons and failure log lines), :func:`taskflow.results.failure_record`
(stored failures and ``on_failure`` payloads) and :class:`RedactingFilter`,
which this module puts on taskflow's own loggers when it is imported, and
which ``taskflow worker`` also puts on its log handler, so that records of
every logger (the application's and the brokers') are masked in a worker
process. The filter masks the message and the formatted traceback
(``record.exc_text``, which :class:`logging.Formatter` reuses); a formatter
that formats ``exc_info`` again by itself bypasses it.

Masking is best effort: a secret in no recognisable form cannot be told from
other text.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

_URL_PASSWORD = re.compile(r"(?<=://)([^\s:/?#@]*):([^\s/?#@]+)@")
_KEY_VALUE = re.compile(
    r"(?i)(?<![a-z0-9])"
    r"(password|passwd|pwd|secret|secret[_-]?key|token|access[_-]?token|auth[_-]?token|"
    r"refresh[_-]?token|api[_-]?key|apikey|access[_-]?key|client[_-]?secret|private[_-]?key|"
    r"credentials?)"
    r"(\"?'?\s*[:=]\s*[\"']?)"
    r"([^\s\"'&,;)}\]]+)"
)
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]{8,}")
_TOKENS = re.compile(
    r"\b(?:AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|[sr]k_(?:live|test)_[0-9A-Za-z]{16,}"
    r"|eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)"
)

#: The loggers of taskflow that write exception text.
LOGGERS = (
    "taskflow.broker",
    "taskflow.worker",
    "taskflow.middleware",
    "taskflow.middleware.callbacks",
    "taskflow.middleware.composition",
    "taskflow.middleware.results",
    "taskflow.middleware.retries",
    "taskflow.brokers.memory",
    "taskflow.brokers.rabbitmq",
    "taskflow.brokers.redis",
    "taskflow.brokers.sqlite",
    "taskflow.results.redis",
    "taskflow.results.sqlite",
    "taskflow.cli.child",
)


def redact(text: str) -> str:
    """Return ``text`` with credentials and secret-looking values replaced by ``***``."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
    text = _KEY_VALUE.sub(rf"\1\2{MASK}", text)
    text = _AUTH_SCHEME.sub(rf"\1 {MASK}", text)
    return _TOKENS.sub(MASK, text)


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and in its formatted traceback; drops nothing."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask ``record`` in place; always keep it."""
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


FILTER = RedactingFilter()


def protect(logger: logging.Logger | logging.Handler) -> None:
    """Put the masking filter on ``logger`` (or a handler), once."""
    if FILTER not in logger.filters:
        logger.addFilter(FILTER)


for _name in LOGGERS:
    protect(logging.getLogger(_name))
