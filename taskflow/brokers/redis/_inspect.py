"""Inspection scripts of the Redis broker: browse a queue, locate a message, list workers.

Each browse is one ``ZRANGE`` with a range on one sorted set plus one hash
read per message returned, so a page costs ``O(log n + limit)`` whatever the
queue's length. Ready messages that a dead worker was running (suspects)
wait in their own set and are not listed among the ready ones.
"""

from __future__ import annotations

from typing import Any

from taskflow._inspection import BrowseRecord, State
from taskflow.brokers.redis._scripts import _PRELUDE

# ARGV: state, offset, limit, dead-letter ttl ms.
# Returns {id, body, score, delivery count, owner, reason, ...}.
BROWSE = (
    _PRELUDE
    + """
local state, offset, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local found, body, scored = {}, BODY, true
if state == 'ready' then
  local members = redis.call('ZRANGE', READY, offset, offset + limit - 1)
  for i = 1, #members do
    found[#found + 1] = string.sub(members[i], 17)
    found[#found + 1] = ''
  end
elseif state == 'delayed' then
  found = redis.call('ZRANGE', DELAYED, offset, offset + limit - 1, 'WITHSCORES')
elseif state == 'in_flight' then
  found = redis.call('ZRANGE', INFLIGHT, offset, offset + limit - 1, 'WITHSCORES')
else
  body = DEAD_BODY
  found = redis.call('ZREVRANGEBYSCORE', DEAD, '+inf', '(' .. (now - tonumber(ARGV[4])),
                     'WITHSCORES', 'LIMIT', offset, limit)
end
local out = {}
for i = 1, #found, 2 do
  local id = found[i]
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', body, id) or ''
  out[#out + 1] = found[i + 1]
  out[#out + 1] = redis.call('HGET', DC, id) or '0'
  out[#out + 1] = redis.call('HGET', OWNER, id) or ''
  out[#out + 1] = redis.call('HGET', DEAD_REASON, id) or ''
end
return out
"""
)

# ARGV: id, dead-letter ttl ms. Returns {state, body, score, delivery count, owner, reason}
# or an empty list.
LOCATE = (
    _PRELUDE
    + """
local id = ARGV[1]
local function answer(state, body, score)
  return {state, body, score or '', redis.call('HGET', DC, id) or '0',
          redis.call('HGET', OWNER, id) or '', redis.call('HGET', DEAD_REASON, id) or ''}
end
local body = redis.call('HGET', BODY, id)
if body then
  local lease = redis.call('ZSCORE', INFLIGHT, id)
  if lease then return answer('in_flight', body, lease) end
  local due = redis.call('ZSCORE', DELAYED, id)
  if due then return answer('delayed', body, due) end
  return answer('ready', body, nil)
end
local dead_at = redis.call('ZSCORE', DEAD, id)
if dead_at and tonumber(dead_at) > now_ms() - tonumber(ARGV[2]) then
  return answer('dead', redis.call('HGET', DEAD_BODY, id) or '', dead_at)
end
return {}
"""
)

_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""
# KEYS: workers zset (id -> expiry ms), records hash. ARGV: id, record, ttl ms.
REGISTER_WORKER = (
    _CLOCK
    + """
local gone = redis.call('HKEYS', KEYS[2])
for i = 1, #gone do
  if not redis.call('ZSCORE', KEYS[1], gone[i]) then redis.call('HDEL', KEYS[2], gone[i]) end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""
)
# KEYS: as above. Returns the records of the workers whose records have not expired.
WORKERS = (
    _CLOCK
    + """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if #ids == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(ids))
"""
)

SCRIPTS = {
    "browse": BROWSE,
    "locate": LOCATE,
    "register_worker": REGISTER_WORKER,
    "workers": WORKERS,
}


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _seconds(score: bytes) -> float | None:
    return float(score) / 1000 if score else None


def record(message_id: bytes, state: State, fields: list[Any]) -> BrowseRecord:
    """One message of a script's answer: ``fields`` are body, score, count, owner, reason."""
    body, score, count, owner, reason = fields
    at = _seconds(score)
    return BrowseRecord(
        _text(message_id),
        bytes(body),
        state,
        eta=at if state == "delayed" else None,
        delivery_count=int(count),
        lease_owner=_text(owner) if owner else None,
        lease_expires_at=at if state == "in_flight" else None,
        reason=_text(reason) if state == "dead" and reason else None,
        dead_at=at if state == "dead" else None,
    )


def browsed(state: State, items: list[Any]) -> list[BrowseRecord]:
    """The records of a ``BROWSE`` answer."""
    return [record(items[i], state, items[i + 1 : i + 6]) for i in range(0, len(items), 6)]


def located(message_id: str, items: list[Any]) -> BrowseRecord | None:
    """The record of a ``LOCATE`` answer, if the message was found."""
    if not items:
        return None
    state: State = _text(items[0])  # type: ignore[assignment]
    return record(message_id.encode(), state, items[1:6])
