"""Unacked counts from RabbitMQ's management plugin, with how fresh they are.

AMQP reports only a queue's ready count. The management API also reports
``messages_unacknowledged``, but from statistics the queue emits every
``collect_statistics_interval`` (5 s by default): a reading can be that old,
and a queue declared a moment ago has none yet. Each reading therefore
carries the server's clock (the HTTP ``Date``) and the queue's
``idle_since``: a queue that went idle after a moment emitted its figures
after that moment, so they cover everything that happened before it.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote, urlsplit

import anyio

logger = logging.getLogger("taskflow.brokers.rabbitmq")

PORT = 15672
COLUMNS = "messages_unacknowledged,messages_ready,idle_since"


@dataclass(frozen=True)
class Reading:
    """One management reading of a queue."""

    unacked: int
    ready: int
    idle_since: float | None  # server clock, epoch seconds
    server_now: float  # server clock at the reply, whole seconds (rounded down)


def management_url(amqp_url: str) -> str:
    """The management API URL of the node behind ``amqp_url`` (same host and credentials)."""
    parts = urlsplit(amqp_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    user = unquote(parts.username or "guest")
    password = unquote(parts.password or "guest")
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}:{PORT}"
    return f"{scheme}://{netloc}/?vhost={quote(vhost, safe='')}"


class Management:
    """Reads queue figures over HTTP; unreachable is logged once and reads as None."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        parts = urlsplit(url)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or PORT}"
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        self.auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        self.vhost = query.get("vhost", quote("/", safe=""))
        self.timeout = timeout
        self.warned = False
        self.reachable = True

    async def read(self, queue: str) -> Reading | None:
        """The queue's figures, or None when the API is unreachable or has none yet."""
        url = f"{self.base}/api/queues/{self.vhost}/{quote(queue, safe='')}?columns={COLUMNS}"
        return await anyio.to_thread.run_sync(self._get, url)

    def _get(self, url: str) -> Reading | None:
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {self.auth}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                body = json.loads(reply.read())
                date = reply.headers.get("Date")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404: a new queue without statistics yet
                self._warn(exc)
            else:
                self.reachable = True
            return None
        except (OSError, ValueError) as exc:
            self._warn(exc)
            return None
        self.warned = False
        self.reachable = True
        return _reading(body, date)

    def _warn(self, exc: Exception) -> None:
        self.reachable = False
        if not self.warned:
            self.warned = True
            logger.warning(
                "RabbitMQ management API at %s unreachable (%s): in_flight counts "
                "this process's deliveries only",
                self.base,
                exc,
            )


def _reading(body: object, date: str | None) -> Reading | None:
    if not isinstance(body, dict):  # a queue without statistics yet reads as []
        return None
    unacked, ready = body.get("messages_unacknowledged"), body.get("messages_ready")
    if not isinstance(unacked, int) or not isinstance(ready, int) or date is None:
        return None
    idle = body.get("idle_since")
    idle_since = None
    if isinstance(idle, str):
        try:
            idle_since = datetime.fromisoformat(idle).timestamp()
        except ValueError:
            idle_since = None
    return Reading(unacked, ready, idle_since, parsedate_to_datetime(date).timestamp())
