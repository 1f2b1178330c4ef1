"""The actors of the FastAPI example: ``taskflow worker examples.fastapi_app.tasks:broker``.

The web app imports this module to send messages; the worker imports it to
run them. Neither needs the other's framework.

Settings come from the environment, read by both processes:

* ``TASKFLOW_BROKER_URL``: the broker (default ``sqlite:///taskflow.sqlite3``
  in the working directory, so nothing needs to be installed);
* ``TASKFLOW_NAMESPACE``: for Redis, a key prefix of this app's own, so
  several apps can share one server.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any, TypedDict

import taskflow

QUEUE = "summaries"


def build_broker() -> taskflow.Broker:
    """The broker named by the environment, keeping results on the same server."""
    options: dict[str, Any] = {"results": True}
    if namespace := os.environ.get("TASKFLOW_NAMESPACE"):
        options["namespace"] = namespace
    return taskflow.broker_from_env(**options)


broker = build_broker()


class Summary(TypedDict):
    """What ``summarize`` finds in a text."""

    words: int
    distinct: int
    top: list[str]


class EmptyText(ValueError):
    """The text has no words: retrying will not help."""


@broker.actor(queue=QUEUE, store_results=True, throws=(EmptyText,), max_retries=3)
def summarize(text: str) -> Summary:
    """Count the words of ``text`` and find the most common ones.

    A sync actor: CPU-bound work runs in the worker's thread pool, so it
    never holds up the worker's event loop.
    """
    words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", text.lower())
    if not words:
        raise EmptyText("the text has no words")
    counts = Counter(words)
    top = sorted(counts, key=lambda word: (-counts[word], word))[:3]
    return {"words": len(words), "distinct": len(counts), "top": top}
