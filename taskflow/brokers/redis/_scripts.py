"""The Lua scripts behind every state change of the Redis broker.

Each script works on one queue and receives the same sixteen keys, in the
order of :data:`QUEUE_KEYS` then the set of queues (the settle script a
seventeenth: its receipt), all under the namespace's hash tag. Times are
milliseconds of the server's clock (``TIME``), never a client's.

Batches travel as one MessagePack argument (:func:`pack`), decoded in the
script by ``cmsgpack``: one argument instead of thousands keeps both the
client's command packing and the server's argument parsing cheap. Inside,
each script touches Redis with a handful of multi-key commands per batch
(``HMGET``, multi-field ``HSET``/``HDEL``, multi-member ``ZADD``/``ZREM``),
not a few commands per message.
"""

from __future__ import annotations

from typing import Any

import msgspec

#: Suffixes of a queue's keys, in the order the scripts receive them.
QUEUE_KEYS = (
    "ready",  # zset: <16-digit sequence><id> -> -priority; ties pop in sequence order
    "delayed",  # zset: id -> due time (ms)
    "inflight",  # zset: id -> lease deadline (ms)
    "body",  # hash: id -> encoded message
    "dc",  # hash: id -> delivery count
    "pri",  # hash: id -> priority (only when not 0)
    "owner",  # hash: id -> lease token of the consumer holding it
    "dead",  # zset: id -> dead-lettered at (ms)
    "dead_body",  # hash: id -> encoded message
    "dead_reason",  # hash: id -> reason
    "notify",  # list: at most one token, wakes a consumer blocked on it
    "seq",  # counter: the sequence numbers of ready members
    "suspects",  # zset: id -> sequence; ready messages that were running when a worker died
    "crashes",  # hash: id -> how many times it was running when its worker died
    "started",  # hash: id -> lease token under which the worker started running it
)

# Status codes of settle operations.
APPLIED = 1
OWNED_BY_OTHER = 0
GONE = 2
NOT_OWNED = 3

_encoder = msgspec.msgpack.Encoder()


def raw_str(data: bytes) -> msgspec.Raw:
    """``data`` as a MessagePack *str*: Redis's cmsgpack has no *bin* type."""
    n = len(data)
    if n < 32:
        head = bytes((0xA0 | n,))
    elif n < 0x100:
        head = b"\xd9" + n.to_bytes(1, "big")
    elif n < 0x10000:
        head = b"\xda" + n.to_bytes(2, "big")
    else:
        head = b"\xdb" + n.to_bytes(4, "big")
    return msgspec.Raw(head + data)


def wire(data: bytes) -> str | msgspec.Raw:
    """Bytes ready for :func:`pack`: a plain string when they are UTF-8 (the usual case)."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return raw_str(data)


def pack(items: Any) -> bytes:
    """Encode a batch for a script; bytes inside must be wrapped by :func:`wire` or :func:`raw_str`."""
    return _encoder.encode(items)


_PRELUDE = """
local READY, DELAYED, INFLIGHT, BODY, DC, PRI, OWNER = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local DEAD, DEAD_BODY, DEAD_REASON, NOTIFY, SEQ = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local SUSPECTS, CRASHES, STARTED, QUEUES = KEYS[13], KEYS[14], KEYS[15], KEYS[16]

-- At maxmemory with noeviction, Redis refuses the first command of a script
-- that may grow memory, and lets the later ones through so as not to stop a
-- script half-way ("only if this is the first write in the context of this
-- script", scriptVerifyOOM). A script that only moves messages (fetch,
-- settle, renew, maintain) starts with a write that cannot grow memory, so a
-- full server still lets work be fetched, acked, retried, renewed and
-- reaped: each move stores about what it frees. Only new messages (ENQUEUE)
-- are refused, and the producer is told.
local function even_when_full()
  redis.call('ZREMRANGEBYSCORE', INFLIGHT, 1, 0)  -- an empty range: removes nothing, ever
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A command with a long argument list, split to stay under Lua's unpack limit.
local function bulk(cmd, key, args)
  local step = 4000
  for i = 1, #args, step do
    redis.call(cmd, key, unpack(args, i, math.min(i + step - 1, #args)))
  end
end

local function notify()
  if redis.call('LPUSH', NOTIFY, '1') > 1 then redis.call('LTRIM', NOTIFY, 0, 0) end
end

-- Ready members are the id behind a 16-digit sequence number, so that equal
-- priorities pop in the order they became ready.
local function sequence(n)
  return redis.call('INCRBY', SEQ, n) - n
end

local function member(seq, id)
  return string.format('%016d', seq) .. id
end

local function id_of(m)
  return string.sub(m, 17)
end

-- Makes ids ready: suspects (see reap) to their own set, the rest by priority.
local function to_ready(ids)
  if #ids == 0 then return end
  local pris = redis.call('HMGET', PRI, unpack(ids))
  local crashes = redis.call('HMGET', CRASHES, unpack(ids))
  local base = sequence(#ids)
  local args, suspects = {}, {}
  for i, id in ipairs(ids) do
    if crashes[i] then
      suspects[#suspects + 1] = base + i
      suspects[#suspects + 1] = id
    else
      args[#args + 1] = -(tonumber(pris[i]) or 0)
      args[#args + 1] = member(base + i, id)
    end
  end
  bulk('ZADD', READY, args)
  bulk('ZADD', SUSPECTS, suspects)
end

-- How many messages a suspect may run with, itself included: half the batch
-- per crash it was part of, so that a group holding a killer shrinks at each
-- crash until the killer runs alone, while innocent suspects still run side
-- by side; alone when its next delivery is its last (an innocent never spends
-- its last chance beside a killer).
local function company(limit, crashes, count, max_deliveries)
  if count + 1 >= max_deliveries then return 1 end
  return math.max(1, math.floor(limit / 2 ^ crashes))
end

-- Takes the next group of suspects (up to n, as company allows), oldest first.
local function suspects(n, max_deliveries)
  local candidates = redis.call('ZRANGE', SUSPECTS, 0, n - 1)
  if #candidates == 0 then return {} end
  local crashes = redis.call('HMGET', CRASHES, unpack(candidates))
  local counts = redis.call('HMGET', DC, unpack(candidates))
  local group, size = {}, n
  for i, id in ipairs(candidates) do
    local own = company(n, tonumber(crashes[i]) or 1, tonumber(counts[i]) or 0, max_deliveries)
    if own < size then size = own end
    if #group >= size then break end
    group[#group + 1] = id
  end
  redis.call('ZREM', SUSPECTS, unpack(group))
  return group
end

-- Forgets that ids were started or ever running at a crash (they are done).
local function acquit(ids)
  bulk('HDEL', STARTED, ids)
  bulk('HDEL', CRASHES, ids)
end

local function promote(now, limit)
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, limit)
  if #due > 0 then
    to_ready(due)
    redis.call('ZREM', DELAYED, unpack(due))
  end
  return #due
end

-- Returns expired leases. A message its worker had started under that lease
-- was running when the worker died: it may be what killed it, so it becomes
-- a suspect (its delivery stays counted). One fetched but never started
-- gets its delivery back: it did nothing wrong.
local function reap(now, limit)
  local expired = redis.call('ZRANGEBYSCORE', INFLIGHT, '-inf', now, 'LIMIT', 0, limit)
  if #expired > 0 then
    redis.call('ZREM', INFLIGHT, unpack(expired))
    local owners = redis.call('HMGET', OWNER, unpack(expired))
    local started = redis.call('HMGET', STARTED, unpack(expired))
    for i, id in ipairs(expired) do
      if started[i] and started[i] == owners[i] then
        redis.call('HINCRBY', CRASHES, id, 1)
      elseif (tonumber(redis.call('HGET', DC, id)) or 0) > 0 then
        redis.call('HINCRBY', DC, id, -1)
      end
    end
    redis.call('HDEL', OWNER, unpack(expired))
    redis.call('HDEL', STARTED, unpack(expired))
    to_ready(expired)
  end
  return #expired
end

local function bury(id, reason, now)
  redis.call('HSET', DEAD_BODY, id, redis.call('HGET', BODY, id) or '')
  redis.call('HSET', DEAD_REASON, id, reason)
  redis.call('ZADD', DEAD, now, id)
  redis.call('HDEL', BODY, id)
  redis.call('HDEL', DC, id)
  redis.call('HDEL', PRI, id)
  redis.call('HDEL', CRASHES, id)
  redis.call('HDEL', STARTED, id)
end

-- Adds {due, id, due, id, ...} to the delayed set. An idle consumer waits no
-- longer than the earliest due time it last saw; a message due before that
-- must wake it, or a short delay or retry would fire up to idle_timeout late.
local function add_delayed(args)
  if #args == 0 then return end
  local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
  local earliest = args[1]
  for i = 3, #args, 2 do
    if args[i] < earliest then earliest = args[i] end
  end
  bulk('ZADD', DELAYED, args)
  if not first[2] or earliest < tonumber(first[2]) then notify() end
end

local function forget_dead(ids)
  redis.call('ZREM', DEAD, unpack(ids))
  redis.call('HDEL', DEAD_BODY, unpack(ids))
  redis.call('HDEL', DEAD_REASON, unpack(ids))
end

local function expire_dead(now, ttl, limit)
  local old = redis.call('ZRANGEBYSCORE', DEAD, '-inf', now - ttl, 'LIMIT', 0, limit)
  if #old > 0 then forget_dead(old) end
  return #old
end
"""

# ARGV: queue name, packed [[id, body, priority, delay ms], ...] (at most 1000).
# An id already stored is skipped, so a repeated send never duplicates.
ENQUEUE = (
    _PRELUDE
    + """
local items = cmsgpack.unpack(ARGV[2])
local stored, single = {}, #items == 1
if single then
  -- One message (a plain send): HSETNX stores it and tells a repeat at once.
  stored[1] = redis.call('HSETNX', BODY, items[1][1], items[1][2]) == 0
else
  local ids = {}
  for i, item in ipairs(items) do ids[i] = item[1] end
  stored = redis.call('HMGET', BODY, unpack(ids))
end
local base = nil
local bodies, pris, ready, delayed, seen = {}, {}, {}, {}, {}
local added = 0
local now = nil
for i, item in ipairs(items) do
  local id, pri, delay = item[1], item[3], item[4]
  if not stored[i] and not seen[id] then
    seen[id] = true
    added = added + 1
    if not single then
      bodies[#bodies + 1] = id
      bodies[#bodies + 1] = item[2]
    end
    if pri ~= 0 then
      pris[#pris + 1] = id
      pris[#pris + 1] = pri
    end
    if delay > 0 then
      now = now or now_ms()
      delayed[#delayed + 1] = now + delay
      delayed[#delayed + 1] = id
    else
      base = base or sequence(#items)
      ready[#ready + 1] = -pri
      ready[#ready + 1] = member(base + i, id)
    end
  end
end
bulk('HSET', BODY, bodies)
bulk('HSET', PRI, pris)
add_delayed(delayed)
-- A consumer blocks only after a fetch found the queue empty, and each fetch
-- that leaves messages behind wakes the next one: only a queue going from
-- empty to not empty needs to wake anyone (and to be registered).
local was_empty = #ready > 0 and redis.call('ZCARD', READY) == 0
bulk('ZADD', READY, ready)
if was_empty then notify() end
if was_empty or #delayed > 0 then redis.call('SADD', QUEUES, ARGV[1]) end
return added
"""
)

# ARGV: n, lease token, lease ms, max message size, max deliveries.
# Returns {ms until the next delayed message is due or -1, {id, body, count,
# ...}, 1 if these are suspects else 0}. Suspects come first and alone, in a
# group of suspects only (see company), never mixed with fresh messages.
# Expired leases are left to the reaper (see _keeper), which holds back after
# an outage so that live workers renew theirs first.
# A body over the size limit is dead-lettered here and comes back as
# {id, size, 0}, so that it never leaves the server.
FETCH = (
    _PRELUDE
    + """
even_when_full()
local n, token, lease, max_size = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local max_deliveries = tonumber(ARGV[5])
local now = now_ms()
promote(now, 1000)
local ids = suspects(n, max_deliveries)
local group = #ids > 0 and 1 or 0
if group == 0 then
  local popped = redis.call('ZPOPMIN', READY, n)
  for i = 1, #popped, 2 do ids[#ids + 1] = id_of(popped[i]) end
end
local out = {}
if #ids > 0 then
  local bodies = redis.call('HMGET', BODY, unpack(ids))
  local counts = redis.call('HMGET', DC, unpack(ids))
  local deadline = now + lease
  local dc, inflight, owner = {}, {}, {}
  for i, id in ipairs(ids) do
    local body = bodies[i] or ''
    out[#out + 1] = id
    if #body > max_size then
      bury(id, 'too_large: ' .. #body .. ' bytes over the limit of ' .. max_size, now)
      out[#out + 1] = #body
      out[#out + 1] = 0
    else
      local count = (tonumber(counts[i]) or 0) + 1
      out[#out + 1] = body
      out[#out + 1] = count
      dc[#dc + 1] = id
      dc[#dc + 1] = count
      inflight[#inflight + 1] = deadline
      inflight[#inflight + 1] = id
      owner[#owner + 1] = id
      owner[#owner + 1] = token
    end
  end
  bulk('HSET', DC, dc)
  bulk('ZADD', INFLIGHT, inflight)
  bulk('HSET', OWNER, owner)
  if redis.call('ZCARD', READY) + redis.call('ZCARD', SUSPECTS) > 0 then notify() end
end
local wait = -1
if #out == 0 then
  local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
  if first[2] then wait = math.max(0, tonumber(first[2]) - now) end
end
return {wait, out, group}
"""
)

# ARGV: packed [[op, id, token, a, b], ...], receipt ttl ms. Ops: a = ack,
# d = dead-letter (a: reason), r = retry (a: new body, b: delay ms), q =
# requeue, u = hand back unstarted (requeue without counting the delivery),
# f = defer (b: delay ms; this delivery not counted), s = started (the worker
# is about to run it; the lease stays). Only the lease holder may settle;
# returns one status code per item.
# KEYS[17] is the batch's receipt: the status codes are kept there for the
# ttl, so that a repeat of the call (its reply was lost) gets the answer of
# the call that was applied, rather than "not owned" for its own work.
SETTLE = (
    (
        _PRELUDE
        + """
local receipt = redis.call('GET', KEYS[17])
if receipt then return cmsgpack.unpack(receipt) end
even_when_full()
local items = cmsgpack.unpack(ARGV[1])
local ids = {}
for i, item in ipairs(items) do ids[i] = item[2] end
local owners = redis.call('HMGET', OWNER, unpack(ids))
local results, settled, acked, requeued, delayed, done = {}, {}, {}, {}, {}, {}
local now = nil
local function later(id, ms)
  if ms > 0 then
    now = now or now_ms()
    delayed[#delayed + 1] = now + ms
    delayed[#delayed + 1] = id
  else
    requeued[#requeued + 1] = id
  end
end
for i, item in ipairs(items) do
  local op, id = item[1], item[2]
  if owners[i] ~= item[3] then
    if owners[i] then
      results[i] = $OWNED_BY_OTHER
    elseif redis.call('HEXISTS', BODY, id) == 1 then
      results[i] = $NOT_OWNED
    else
      results[i] = $GONE
    end
  elseif op == 's' then
    results[i] = $APPLIED
    redis.call('HSET', STARTED, id, item[3])
  else
    results[i] = $APPLIED
    settled[#settled + 1] = id
    if op == 'a' then
      acked[#acked + 1] = id
    elseif op == 'd' then
      now = now or now_ms()
      bury(id, item[4], now)
    elseif op == 'r' then
      -- It ran and failed: whatever kills workers, not this one.
      redis.call('HSET', BODY, id, item[4])
      redis.call('HDEL', DC, id)
      done[#done + 1] = id
      later(id, item[5])
    else
      if op ~= 'q' then redis.call('HINCRBY', DC, id, -1) end
      later(id, op == 'f' and item[5] or 0)
    end
  end
end
if #settled > 0 then
  bulk('ZREM', INFLIGHT, settled)
  bulk('HDEL', OWNER, settled)
  bulk('HDEL', STARTED, settled)
end
if #acked > 0 then
  bulk('HDEL', BODY, acked)
  bulk('HDEL', DC, acked)
  bulk('HDEL', PRI, acked)
  acquit(acked)
end
acquit(done)
add_delayed(delayed)
if #requeued > 0 then
  to_ready(requeued)
  notify()
end
redis.call('SET', KEYS[17], cmsgpack.pack(results), 'PX', ARGV[2])
return results
"""
    )
    .replace("$APPLIED", str(APPLIED))
    .replace("$OWNED_BY_OTHER", str(OWNED_BY_OTHER))
    .replace("$NOT_OWNED", str(NOT_OWNED))
    .replace("$GONE", str(GONE))
)

# ARGV: lease ms, packed [[id, token], ...]. Extends the leases still held;
# returns the ids whose lease was taken back.
RENEW = (
    _PRELUDE
    + """
even_when_full()
local deadline = now_ms() + tonumber(ARGV[1])
local items = cmsgpack.unpack(ARGV[2])
local ids = {}
for i, item in ipairs(items) do ids[i] = item[1] end
local owners = redis.call('HMGET', OWNER, unpack(ids))
local lost, held = {}, {}
for i, item in ipairs(items) do
  if owners[i] == item[2] then
    held[#held + 1] = deadline
    held[#held + 1] = item[1]
  else
    lost[#lost + 1] = item[1]
  end
end
bulk('ZADD', INFLIGHT, held)
return lost
"""
)

# ARGV: dead-letter ttl ms, limit. Promotes due delayed messages, returns
# expired leases to ready and drops expired dead letters.
MAINTAIN = (
    _PRELUDE
    + """
even_when_full()
local now, limit = now_ms(), tonumber(ARGV[2])
local promoted = promote(now, limit)
local reaped = reap(now, limit)
local expired = expire_dead(now, tonumber(ARGV[1]), limit)
if promoted + reaped > 0 then notify() end
return {promoted, reaped, expired}
"""
)

# ARGV: dead-letter ttl ms. Due delayed messages count as ready.
STATS = (
    _PRELUDE
    + """
local now = now_ms()
local due = redis.call('ZCOUNT', DELAYED, '-inf', now)
return {
  redis.call('ZCARD', READY) + redis.call('ZCARD', SUSPECTS) + due,
  redis.call('ZCARD', DELAYED) - due,
  redis.call('ZCARD', INFLIGHT),
  redis.call('ZCOUNT', DEAD, '(' .. (now - tonumber(ARGV[1])), '+inf'),
}
"""
)

# ARGV: dead-letter ttl ms, limit. Returns {id, body, reason, dead at ms, ...}, oldest first.
DEAD_LETTERS = (
    _PRELUDE
    + """
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', DEAD, '(' .. (now - tonumber(ARGV[1])), '+inf',
                       'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #ids, 2 do
  local id = ids[i]
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', DEAD_BODY, id) or ''
  out[#out + 1] = redis.call('HGET', DEAD_REASON, id) or ''
  out[#out + 1] = ids[i + 1]
end
return out
"""
)

# ARGV: dead-letter ttl ms, limit, then ids (none: the oldest `limit`).
# Requeued messages start over: priority 0, delivery count 0.
REQUEUE_DEAD = (
    _PRELUDE
    + """
even_when_full()
local now = now_ms()
expire_dead(now, tonumber(ARGV[1]), 1000)
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', DEAD, 0, tonumber(ARGV[2]) - 1)
end
local moved, seen = {}, {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', DEAD_BODY, id)
  -- Once per id, and never while a live message has the id: one place each.
  if body and not seen[id] and redis.call('HEXISTS', BODY, id) == 0 then
    seen[id] = true
    redis.call('HSET', BODY, id, body)
    redis.call('HDEL', DC, id)
    redis.call('HDEL', PRI, id)
    redis.call('HDEL', CRASHES, id)
    moved[#moved + 1] = id
  end
end
if #moved > 0 then
  to_ready(moved)
  forget_dead(moved)
  notify()
end
return #moved
"""
)

# ARGV: limit. Deletes up to `limit` ready and `limit` delayed messages.
PURGE = (
    _PRELUDE
    + """
local limit, n = tonumber(ARGV[1]), 0
for _, key in ipairs({READY, DELAYED, SUSPECTS}) do
  local members = redis.call('ZRANGE', key, 0, limit - 1)
  if #members > 0 then
    redis.call('ZREM', key, unpack(members))
    local ids = members
    if key == READY then
      ids = {}
      for i, m in ipairs(members) do ids[i] = id_of(m) end
    end
    redis.call('HDEL', BODY, unpack(ids))
    redis.call('HDEL', DC, unpack(ids))
    redis.call('HDEL', PRI, unpack(ids))
    acquit(ids)
    n = n + #members
  end
end
return n
"""
)

# ARGV: limit. Deletes up to `limit` dead letters.
PURGE_DEAD = (
    _PRELUDE
    + """
local ids = redis.call('ZRANGE', DEAD, 0, tonumber(ARGV[1]) - 1)
if #ids > 0 then forget_dead(ids) end
return #ids
"""
)
