"""Where the scaler and the worker helper meet for fence and drain: keys, fields and the scripts.

Standard library only: the worker helper (Celery only) and the scaler (redis-py) both use these
names, so neither imports the other. Per pool, under Celery's ``global_keyprefix`` like kombu's keys:

- ``_celery_autoscaler.workers.<pool>``: a sorted set of the pool's workers running the helper,
  scored by the Redis server's clock (ms) at their last poll. The scaler counts the fresh ones: a
  pool without any keeps today's scale-in (no drain).
- ``_celery_autoscaler.drain.<pool>``: the pool's drain, a hash that exists only while it lasts
  (the scaler refreshes its TTL every tick). Field ``open``: how many more workers may claim a slot;
  ``since``/``lowered_at``: when the drain began and when the scaler last lowered the count in it
  (the scaler's clock); ``worker:<hostname>``:
  ``draining:<ms>`` (claimed, stopped consuming, still finishing what it held) or ``drained:<ms>``
  (holds nothing, protection released), refreshed at every poll by the Redis server's clock.

Every time is the Redis server's, so the workers' and the scaler's clocks never meet.
"""

from __future__ import annotations

DRAIN_KEY = "_celery_autoscaler.drain"
WORKERS_KEY = "_celery_autoscaler.workers"
OPEN_FIELD = "open"
LOWERED_AT_FIELD = "lowered_at"
SINCE_FIELD = "since"
WORKER_FIELD_PREFIX = "worker:"
DRAINING = "draining"
DRAINED = "drained"
FRESH_MS = 5000
"""A worker whose last poll is older than this is gone (dead, stopped or cut off): it counts for nothing."""
WORKERS_TTL_MS = 60_000
"""The workers set expires this long after the last poll of any worker (a pool that went away)."""
DRAIN_TTL_MS = 60_000
"""A drain the scaler stops refreshing ends this long after its last tick: every worker resumes."""

POLL_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, ''}
end
local field = 'worker:' .. ARGV[1]
local mine = redis.call('HGET', KEYS[1], field)
local want = ARGV[2]
if want == 'claim' then
  if mine then
    return {1, string.match(mine, '^[a-z]+')}
  end
  if tonumber(redis.call('HGET', KEYS[1], 'open') or '0') > 0 then
    redis.call('HINCRBY', KEYS[1], 'open', -1)
    redis.call('HSET', KEYS[1], field, 'draining:' .. now)
    return {1, 'draining'}
  end
  return {1, ''}
end
if want == 'draining' or want == 'drained' then
  redis.call('HSET', KEYS[1], field, want .. ':' .. now)
  return {1, want}
end
if want == 'leave' then
  redis.call('HDEL', KEYS[1], field)
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return {1, ''}
"""
"""A worker's poll, atomically: mark itself present; then with ARGV[2] ``claim`` take a free slot if
there is one, ``draining``/``drained`` refresh its own state, ``leave`` forget it, ``look`` only read.
KEYS: drain hash, workers set; ARGV: hostname, what, workers TTL (ms). Returns {drain exists (0/1), state}.
"""

STATUS_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fresh = now - tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. fresh)
local workers = redis.call('ZCARD', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {workers, 0, 0, 0, 0, '', ''}
end
local drained, draining = 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  if string.sub(name, 1, 7) == 'worker:' then
    local state, at = string.match(value, '^([a-z]+):(%d+)$')
    if at and tonumber(at) >= fresh then
      if state == 'drained' then drained = drained + 1 elseif state == 'draining' then draining = draining + 1 end
    else
      redis.call('HDEL', KEYS[1], name)
    end
  end
end
return {workers, 1, tonumber(redis.call('HGET', KEYS[1], 'open') or '0'), draining, drained,
        redis.call('HGET', KEYS[1], 'lowered_at') or '', redis.call('HGET', KEYS[1], 'since') or ''}
"""
"""The scaler's read of one pool, atomically: forget workers and drain entries older than ARGV[1] ms,
then {fresh workers, drain exists (0/1), open slots, draining, drained, lowered_at or '', since or ''}.
KEYS: drain hash, workers set.
"""


def drain_key(key_prefix: str, pool: str) -> str:
    """The hash of ``pool``'s drain."""
    return f"{key_prefix}{DRAIN_KEY}.{pool}"


def workers_key(key_prefix: str, pool: str) -> str:
    """The sorted set of ``pool``'s workers that run the helper."""
    return f"{key_prefix}{WORKERS_KEY}.{pool}"
