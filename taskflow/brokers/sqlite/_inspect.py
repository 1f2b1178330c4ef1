"""The SQL of the SQLite broker's inspection: browse a queue, locate a message, list workers."""

from __future__ import annotations

from typing import Any

from taskflow._inspection import BrowseRecord, State
from taskflow.brokers.sqlite._sql import LIVE_DEAD, NOW, TABLE, WAITING, WALL_NOW

# -- inspection: one statement per state, each a walk of an index on the queue,
# so a page costs its offset plus its rows whatever the queue's length.
_ROW = f"id, body, ready_at, deliveries, lease_owner, lease_expires, reason, dead_at, {NOW}"
BROWSE = {
    "ready": f"""
SELECT {_ROW} FROM {TABLE} INDEXED BY taskflow_messages_next
WHERE queue = :queue AND {WAITING} AND ready_at <= {NOW}
ORDER BY priority DESC, ready_at, seq LIMIT :limit OFFSET :offset""",
    "delayed": f"""
SELECT {_ROW} FROM {TABLE} INDEXED BY taskflow_messages_due
WHERE queue = :queue AND {WAITING} AND ready_at > {NOW}
ORDER BY ready_at LIMIT :limit OFFSET :offset""",
    "in_flight": f"""
SELECT {_ROW} FROM {TABLE} INDEXED BY taskflow_messages_inflight
WHERE queue = :queue AND lease_owner IS NOT NULL
ORDER BY lease_expires LIMIT :limit OFFSET :offset""",
    "dead": f"""
SELECT {_ROW} FROM {TABLE} INDEXED BY taskflow_messages_died
WHERE {LIVE_DEAD} ORDER BY dead_at DESC LIMIT :limit OFFSET :offset""",
}
LOCATE = f"""
SELECT {_ROW} FROM {TABLE} INDEXED BY taskflow_messages_id
WHERE id = :id AND queue = :queue AND (dead_at IS NULL OR dead_until > {NOW}) LIMIT 1
"""
REGISTER_WORKER = (
    "INSERT OR REPLACE INTO taskflow_workers (id, record, expires)"
    f" VALUES (:id, :record, {WALL_NOW} + :ttl)"
)
EXPIRE_WORKERS = f"DELETE FROM taskflow_workers WHERE expires <= {WALL_NOW}"
UNREGISTER_WORKER = "DELETE FROM taskflow_workers WHERE id = :id"
LIVE_WORKERS = f"SELECT record FROM taskflow_workers WHERE expires > {WALL_NOW}"


def browse_record(row: tuple[Any, ...]) -> BrowseRecord:
    """A row of ``BROWSE`` or ``LOCATE`` as the hub's record, its state worked out."""
    message_id, body, ready_at, deliveries, owner, lease_expires, reason, dead_at, now = row
    state: State
    if dead_at is not None:
        state = "dead"
    elif owner is not None:
        state = "in_flight"
    elif ready_at > now:
        state = "delayed"
    else:
        state = "ready"
    eta = ready_at if state == "delayed" else None
    return BrowseRecord(
        message_id, body, state, eta, deliveries, owner, lease_expires, reason, dead_at
    )
