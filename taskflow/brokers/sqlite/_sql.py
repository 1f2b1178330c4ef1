"""The SQL of the SQLite broker: the schema and one statement per change of state.

Every time in the table (``ready_at``, leases, dead-letter times) is read
from the host clock (:mod:`._clock`) inside the statement, through the
``taskflow_now()`` function each broker connection registers: never from a
caller's clock, and never moved by a step of the wall clock.
"""

from __future__ import annotations

import sqlite3

#: Unix time in seconds by the host clock (see ``_clock``), once per statement.
NOW = "taskflow_now()"
#: Unix time by SQLite's reading of the wall clock (for connections without the host clock).
WALL_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

TABLE = "taskflow_messages"
WAITING = "lease_owner IS NULL AND dead_at IS NULL"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    ready_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    expiries INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL,
    dead_at REAL,
    dead_until REAL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS taskflow_cron (
    schedule TEXT NOT NULL,
    fire_at REAL NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (schedule, fire_at)
);
CREATE TABLE IF NOT EXISTS taskflow_cancels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS taskflow_unique (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS taskflow_messages_queue ON {TABLE} (queue);
CREATE INDEX IF NOT EXISTS taskflow_messages_next
    ON {TABLE} (queue, priority DESC, ready_at, seq) WHERE {WAITING};
CREATE INDEX IF NOT EXISTS taskflow_messages_due
    ON {TABLE} (queue, ready_at) WHERE {WAITING};
CREATE INDEX IF NOT EXISTS taskflow_messages_leased
    ON {TABLE} (lease_owner, lease_expires) WHERE lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS taskflow_messages_dead
    ON {TABLE} (dead_until) WHERE dead_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS taskflow_messages_id ON {TABLE} (id);
CREATE INDEX IF NOT EXISTS taskflow_messages_inflight
    ON {TABLE} (queue, lease_expires) WHERE lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS taskflow_messages_died
    ON {TABLE} (queue, dead_at) WHERE dead_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS taskflow_workers (
    id TEXT PRIMARY KEY,
    record BLOB NOT NULL,
    expires REAL NOT NULL
);
"""

INSERT = f"""
INSERT INTO {TABLE} (queue, id, body, priority, ready_at) VALUES (?, ?, ?, ?, {NOW} + ?)
"""
# Highest priority first, then in the order messages became ready (FIFO for
# plain sends), one priority at a time: with the priority fixed, the walk of
# the ``next`` index is a range on ``ready_at`` that ends at the first delayed
# message, so delayed messages cost nothing however many there are. (Ordered
# across priorities in one statement, the walk had to read every delayed
# message of the queue whenever fewer than ``limit`` were ready.) The next
# priority down is one index seek. INDEXED BY keeps the planner off the
# ``due`` index, which would sort the queue.
TOP_PRIORITY = f"""
SELECT MAX(priority) FROM {TABLE} INDEXED BY taskflow_messages_next
WHERE queue = :queue AND {WAITING}
"""
NEXT_PRIORITY = TOP_PRIORITY + " AND priority < :priority"
CANDIDATES = f"""
SELECT seq, expiries, deliveries FROM {TABLE} INDEXED BY taskflow_messages_next
WHERE queue = :queue AND {WAITING} AND priority = :priority AND ready_at <= {NOW}
ORDER BY ready_at, seq LIMIT :limit
"""
UNLEASE = "lease_owner = NULL, lease_expires = NULL"
CLAIM = f"""
UPDATE {TABLE} SET lease_owner = :owner, lease_expires = {NOW} + :lease, deliveries = deliveries + 1
WHERE seq IN (SELECT value FROM json_each(:seqs)) AND {WAITING}
RETURNING seq, id, body, deliveries
"""
# Seconds until the first waiting message is due (<= 0: one is ready), or NULL.
NEXT_DUE = f"SELECT MIN(ready_at) - {NOW} FROM {TABLE} WHERE queue = ? AND {WAITING}"
# Held while this owner's lease has not been taken back by a reaper, even if
# its deadline passed: nobody else can have the message, so a late ack loses
# nothing and duplicates nothing. Once reaped, ``lease_owner`` is another or
# NULL and the settlement is fenced.
HELD = "seq = :seq AND lease_owner = :owner"
ACK = f"DELETE FROM {TABLE} WHERE {HELD}"
RETRY = f"""
UPDATE {TABLE}
SET body = :body, ready_at = {NOW} + :delay, deliveries = 0, expiries = 0, {UNLEASE}
WHERE {HELD}
"""
DEAD_LETTER = f"""
UPDATE {TABLE}
SET dead_at = {NOW}, dead_until = {NOW} + :ttl, reason = :reason, {UNLEASE}
WHERE {HELD}
"""
# ``:delivered`` is 0 for a message handed back unseen: its delivery is undone.
REQUEUE = f"""
UPDATE {TABLE}
SET {UNLEASE}, deliveries = deliveries - 1 + :delivered
WHERE seq = :seq AND lease_owner = :owner
"""
# Back to waiting after ``:delay`` seconds, with this delivery undone.
DEFER = f"""
UPDATE {TABLE}
SET ready_at = {NOW} + :delay, deliveries = deliveries - 1, {UNLEASE}
WHERE {HELD}
"""
# A late heartbeat still renews what no reaper has taken back.
RENEW = f"UPDATE {TABLE} SET lease_expires = {NOW} + :lease WHERE lease_owner = :owner"
# A process never takes back its own leases: its heartbeat renews them for as
# long as it lives, however late it runs.
EXPIRED = f"lease_owner IS NOT NULL AND lease_owner != :owner AND lease_expires <= {NOW}"
REAP_PROBE = f"""
SELECT
    EXISTS (SELECT 1 FROM {TABLE} WHERE {EXPIRED}),
    EXISTS (SELECT 1 FROM {TABLE} WHERE dead_at IS NOT NULL AND dead_until <= {NOW})
"""
REAP_LEASES = f"UPDATE {TABLE} SET {UNLEASE}, expiries = expiries + 1 WHERE {EXPIRED}"
REAP_DEAD = f"DELETE FROM {TABLE} WHERE dead_at IS NOT NULL AND dead_until <= {NOW}"
STATS = f"""
SELECT
    COALESCE(SUM({WAITING} AND ready_at <= {NOW}), 0),
    COALESCE(SUM({WAITING} AND ready_at > {NOW}), 0),
    COALESCE(SUM(lease_owner IS NOT NULL), 0),
    COALESCE(SUM(dead_at IS NOT NULL AND dead_until > {NOW}), 0)
FROM {TABLE} WHERE queue = ?
"""
LIVE_DEAD = f"queue = :queue AND dead_at IS NOT NULL AND dead_until > {NOW}"
DEAD_LETTERS = f"""
SELECT id, body, reason, dead_at FROM {TABLE} WHERE {LIVE_DEAD}
ORDER BY dead_at, seq LIMIT :limit
"""
REQUEUE_DEAD = f"""
UPDATE {TABLE}
SET dead_at = NULL, dead_until = NULL, reason = NULL, ready_at = {NOW}, deliveries = 0,
    expiries = 0
WHERE {LIVE_DEAD}
"""
ONLY_IDS = " AND id IN (SELECT value FROM json_each(:ids))"
PURGE = f"DELETE FROM {TABLE} WHERE queue = ? AND {WAITING}"
PURGE_DEAD = f"DELETE FROM {TABLE} WHERE {LIVE_DEAD}"
DROP_EXPIRED_DEAD = f"DELETE FROM {TABLE} WHERE queue = :queue AND dead_at IS NOT NULL"
QUEUES = f"SELECT DISTINCT queue FROM {TABLE}"


def candidates(conn: sqlite3.Connection, queue: str, limit: int) -> list[tuple[int, int, int]]:
    """The ``(seq, expiries, deliveries)`` of up to ``limit`` ready messages, best first.

    Costs one index seek per priority that has waiting messages, plus the
    rows returned; never a read of the delayed messages.
    """
    rows: list[tuple[int, int, int]] = []
    params: dict[str, object] = {"queue": queue, "limit": limit}
    priority = conn.execute(TOP_PRIORITY, params).fetchone()[0]
    while priority is not None and len(rows) < limit:
        params.update(priority=priority, limit=limit - len(rows))
        rows += conn.execute(CANDIDATES, params).fetchall()
        priority = conn.execute(NEXT_PRIORITY, params).fetchone()[0]
    return rows


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the table and its indexes if missing, inside the caller's transaction."""
    # Statement by statement: ``executescript`` would commit the open transaction.
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


#: Claim one fire time of a schedule: a row inserted, or nothing when it exists.
CLAIM_FIRE = (
    "INSERT OR IGNORE INTO taskflow_cron (schedule, fire_at, expires)"
    f" VALUES (:schedule, :fire_at, {WALL_NOW} + :ttl)"
)
#: Forget claims past their time, but each schedule's latest (its last fire).
EXPIRE_FIRES = (
    f"DELETE FROM taskflow_cron WHERE expires < {WALL_NOW} AND fire_at < "
    "(SELECT MAX(c.fire_at) FROM taskflow_cron c WHERE c.schedule = taskflow_cron.schedule)"
)
LAST_FIRE = "SELECT MAX(fire_at) FROM taskflow_cron WHERE schedule = :schedule"

#: Append one id to the cancel log, and forget expired entries.
CANCEL = f"INSERT INTO taskflow_cancels (id, expires) VALUES (:id, {WALL_NOW} + :ttl)"
EXPIRE_CANCELS = f"DELETE FROM taskflow_cancels WHERE expires < {WALL_NOW}"
CANCELLATIONS = "SELECT seq, id FROM taskflow_cancels WHERE seq > :after ORDER BY seq LIMIT 10000"

#: A unique key: drop it when expired, hold it when free, then read its holder.
UNIQUE_EXPIRE = f"DELETE FROM taskflow_unique WHERE key = :key AND expires <= {WALL_NOW}"
UNIQUE_HOLD = (
    "INSERT OR IGNORE INTO taskflow_unique (key, id, expires)"
    f" VALUES (:key, :id, {WALL_NOW} + :ttl)"
)
UNIQUE_HOLDER = "SELECT id FROM taskflow_unique WHERE key = :key"
UNIQUE_RELEASE = (
    f"UPDATE taskflow_unique SET expires = {WALL_NOW} + :ttl WHERE key = :key AND id = :id"
)
