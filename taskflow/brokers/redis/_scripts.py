"""The Lua scripts behind every state change of the Redis broker.

Each script works on one queue and receives the same thirteen keys, in the order
of :data:`QUEUE_KEYS`, all under the namespace's hash tag. Times are
milliseconds of the server's clock (``TIME``), never a client's.
"""

from __future__ import annotations

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
)

# Status codes of settle operations.
APPLIED = 1
OWNED_BY_OTHER = 0
GONE = 2
NOT_OWNED = 3

_PRELUDE = """
local READY, DELAYED, INFLIGHT, BODY, DC, PRI, OWNER = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local DEAD, DEAD_BODY, DEAD_REASON, NOTIFY, SEQ, QUEUES = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ready_score(id)
  local p = redis.call('HGET', PRI, id)
  if p then return -tonumber(p) end
  return 0
end

local function notify()
  redis.call('LPUSH', NOTIFY, '1')
  redis.call('LTRIM', NOTIFY, 0, 0)
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

local function to_ready(ids)
  local base = sequence(#ids)
  for i, id in ipairs(ids) do
    redis.call('ZADD', READY, ready_score(id), member(base + i, id))
  end
end

local function promote(now, limit)
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, limit)
  if #due > 0 then
    to_ready(due)
    redis.call('ZREM', DELAYED, unpack(due))
  end
  return #due
end

local function reap(now, limit)
  local expired = redis.call('ZRANGEBYSCORE', INFLIGHT, '-inf', now, 'LIMIT', 0, limit)
  if #expired > 0 then
    to_ready(expired)
    redis.call('ZREM', INFLIGHT, unpack(expired))
    redis.call('HDEL', OWNER, unpack(expired))
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

# ARGV: queue name, then (id, body, priority, delay ms) per message.
# An id already stored is skipped, so a retried send never duplicates.
ENQUEUE = (
    _PRELUDE
    + """
local added, ready, now = 0, 0, nil
local base = sequence((#ARGV - 1) / 4)
for i = 2, #ARGV, 4 do
  local id = ARGV[i]
  if redis.call('HSETNX', BODY, id, ARGV[i + 1]) == 1 then
    local pri = tonumber(ARGV[i + 2])
    if pri ~= 0 then redis.call('HSET', PRI, id, ARGV[i + 2]) end
    local delay = tonumber(ARGV[i + 3])
    if delay > 0 then
      now = now or now_ms()
      redis.call('ZADD', DELAYED, now + delay, id)
    else
      redis.call('ZADD', READY, -pri, member(base + (i + 2) / 4, id))
      ready = ready + 1
    end
    added = added + 1
  end
end
if ready > 0 then notify() end
redis.call('SADD', QUEUES, ARGV[1])
return added
"""
)

# ARGV: n, lease token, lease ms, max message size.
# Returns {ms until the next delayed message is due or -1, {id, body, count, ...}}.
# A body over the size limit is dead-lettered here and comes back as
# {id, size, 0}, so that it never leaves the server.
FETCH = (
    _PRELUDE
    + """
local n, token, lease, max_size = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
promote(now, 1000)
reap(now, 1000)
local popped = redis.call('ZPOPMIN', READY, n)
local out = {}
local deadline = now + lease
for i = 1, #popped, 2 do
  local id = id_of(popped[i])
  local size = redis.call('HSTRLEN', BODY, id)
  out[#out + 1] = id
  if size > max_size then
    bury(id, 'too_large: ' .. size .. ' bytes over the limit of ' .. max_size, now)
    out[#out + 1] = size
    out[#out + 1] = 0
  else
    out[#out + 1] = redis.call('HGET', BODY, id) or ''
    out[#out + 1] = redis.call('HINCRBY', DC, id, 1)
    redis.call('ZADD', INFLIGHT, deadline, id)
    redis.call('HSET', OWNER, id, token)
  end
end
if #popped > 0 and redis.call('ZCARD', READY) > 0 then notify() end
local wait = -1
if #out == 0 then
  local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
  if first[2] then wait = math.max(0, tonumber(first[2]) - now) end
end
return {wait, out}
"""
)

# ARGV: (op, id, token, a, b) per item. Ops: a = ack, d = dead-letter (a: reason),
# r = retry (a: new body, b: delay ms), q = requeue, u = hand back unstarted
# (requeue without counting the delivery). Only the lease holder may settle.
SETTLE = (
    (
        _PRELUDE
        + """
local now = nil
local results = {}
local woke = false
for i = 1, #ARGV, 5 do
  local op, id = ARGV[i], ARGV[i + 1]
  local owner = redis.call('HGET', OWNER, id)
  local status
  if owner == ARGV[i + 2] then
    status = $APPLIED
    redis.call('ZREM', INFLIGHT, id)
    redis.call('HDEL', OWNER, id)
    if op == 'a' then
      redis.call('HDEL', BODY, id)
      redis.call('HDEL', DC, id)
      redis.call('HDEL', PRI, id)
    elseif op == 'd' then
      now = now or now_ms()
      bury(id, ARGV[i + 3], now)
    elseif op == 'r' then
      redis.call('HSET', BODY, id, ARGV[i + 3])
      redis.call('HDEL', DC, id)
      local delay = tonumber(ARGV[i + 4])
      if delay > 0 then
        now = now or now_ms()
        redis.call('ZADD', DELAYED, now + delay, id)
      else
        to_ready({id})
        woke = true
      end
    else
      if op == 'u' then redis.call('HINCRBY', DC, id, -1) end
      to_ready({id})
      woke = true
    end
  elseif owner then
    status = $OWNED_BY_OTHER
  elseif redis.call('HEXISTS', BODY, id) == 1 then
    status = $NOT_OWNED
  else
    status = $GONE
  end
  results[#results + 1] = status
end
if woke then notify() end
return results
"""
    )
    .replace("$APPLIED", str(APPLIED))
    .replace("$OWNED_BY_OTHER", str(OWNED_BY_OTHER))
    .replace("$NOT_OWNED", str(NOT_OWNED))
    .replace("$GONE", str(GONE))
)

# ARGV: lease ms, then (id, token) pairs. Extends the leases still held;
# returns the ids whose lease was taken back.
RENEW = (
    _PRELUDE
    + """
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  if redis.call('HGET', OWNER, ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', INFLIGHT, deadline, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""
)

# ARGV: dead-letter ttl ms, limit. Promotes due delayed messages, returns
# expired leases to ready and drops expired dead letters.
MAINTAIN = (
    _PRELUDE
    + """
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
  redis.call('ZCARD', READY) + due,
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
local now = now_ms()
expire_dead(now, tonumber(ARGV[1]), 1000)
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', DEAD, 0, tonumber(ARGV[2]) - 1)
end
local n = 0
for _, id in ipairs(ids) do
  local body = redis.call('HGET', DEAD_BODY, id)
  if body then
    redis.call('HSET', BODY, id, body)
    redis.call('HDEL', DC, id)
    redis.call('HDEL', PRI, id)
    to_ready({id})
    forget_dead({id})
    n = n + 1
  end
end
if n > 0 then notify() end
return n
"""
)

# ARGV: limit. Deletes up to `limit` ready and `limit` delayed messages.
PURGE = (
    _PRELUDE
    + """
local limit, n = tonumber(ARGV[1]), 0
for _, key in ipairs({READY, DELAYED}) do
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
