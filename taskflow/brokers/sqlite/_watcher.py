"""The idle-queue watcher: polls from its own thread, so an idle consumer costs the loop nothing."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

import anyio
import anyio.from_thread
import anyio.lowlevel

from taskflow.brokers.sqlite import _sql as sql
from taskflow.brokers.sqlite._database import Database, Ticker

logger = logging.getLogger("taskflow.brokers.sqlite")


class Watcher:
    """Checks watched queues every ``interval`` seconds and wakes their consumers.

    A consumer that has backed off to its slowest poll hands the polling over:
    it registers an event for its queue and sleeps. The watcher thread does
    one index lookup per watched queue per interval, and sets (then forgets)
    a queue's events once a message there is due. Polling from this thread,
    rather than hopping from the event loop to a worker thread and back for
    every look, is what keeps an idle worker near zero CPU.
    """

    def __init__(self, db: Database, interval: float) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._watched: dict[str, dict[anyio.Event, anyio.lowlevel.EventLoopToken]] = {}
        self._ticker = Ticker("taskflow-sqlite-watcher", interval, self._tick, db)

    def start(self) -> None:
        """Start the thread."""
        self._ticker.start()

    def stop(self) -> None:
        """Stop the thread and close its connection."""
        self._ticker.stop()

    def watch(self, queue: str, event: anyio.Event) -> None:
        """Set ``event`` (from the calling event loop) when a message on ``queue`` is due."""
        token = anyio.lowlevel.current_token()
        with self._lock:
            self._watched.setdefault(queue, {})[event] = token

    def unwatch(self, queue: str, event: anyio.Event) -> None:
        """Stop watching ``queue`` for ``event``."""
        with self._lock:
            events = self._watched.get(queue)
            if events is not None:
                events.pop(event, None)
                if not events:
                    del self._watched[queue]

    def _tick(self) -> None:
        with self._lock:
            queues = list(self._watched)
        for queue in queues:
            if not self._db.read(_due_reader(queue)):
                continue
            with self._lock:
                events = self._watched.pop(queue, {})
            for event, token in events.items():
                try:
                    anyio.from_thread.run_sync(event.set, token=token)
                except RuntimeError:  # that event loop is gone
                    logger.debug("a consumer of %s went away with its event loop", queue)


def _due_reader(queue: str) -> Callable[[sqlite3.Connection], bool]:
    def due(conn: sqlite3.Connection) -> bool:
        seconds = conn.execute(sql.NEXT_DUE, (queue,)).fetchone()[0]
        return seconds is not None and seconds <= 0

    return due
