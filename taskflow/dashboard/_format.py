"""What the pages show of a message: its arguments (through a replaceable formatter), times."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from taskflow.message import Message

#: Turns a message's arguments into the text a page shows; replace it to mask secrets.
Formatter = Callable[[Message[Any]], str]


def show_arguments(message: Message[Any]) -> str:
    """The default formatter: the arguments as they are, like a call (``1, 'x', to='y'``)."""
    parts = [repr(a) for a in message.args]
    parts += [f"{k}={v!r}" for k, v in message.kwargs.items()]
    return ", ".join(parts)


def age(moment: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """How long ago (or, negative, how far ahead) ``moment`` is, as ``4.2s``."""
    if moment is None:
        return "-"
    seconds = ((now or dt.datetime.now(dt.UTC)) - moment).total_seconds()
    return f"{seconds:.1f}s"


def iso(moment: dt.datetime | None) -> str:
    """ISO 8601 to the second, or ``-``."""
    return "-" if moment is None else moment.isoformat(timespec="seconds")
