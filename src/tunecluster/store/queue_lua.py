"""The Lua functions the queue's scripts are built from (``queue_scripts.py``).

``LUA_COMMON`` is prepended to every script: Redis time, events, ownership, request
replay, the ready queue by priority, fencing, gang membership and the release of a
running trial. ``LUA_GANG`` adds gang formation to the scripts that form gangs (claim,
a forming member's wait, the reaper). Each script runs atomically in Redis.
"""

from __future__ import annotations

from tunecluster.states import lua_constants
from tunecluster.store import telemetry

REQUEST_TTL_MS = 600_000  # how long the reply of a non-idempotent call is kept for retries

# Shared by every script. Rules each script follows:
# - every check (ownership, fencing, decoding and encoding of payloads) runs before the
#   first write, so a script that refuses or fails has written nothing;
# - time is Redis server time (TIME), never a host's clock: leases and heartbeats are
#   written and compared by different hosts;
# - a script whose effect is not idempotent (claim, finish) takes a request key: the
#   first run stores its reply there, and a retry of the same call (redis-py re-sends
#   EVALSHA after a dropped connection) returns that reply instead of acting twice;
# - the cluster's totals (``telemetry``: trials started, ended, retried, leases reaped)
#   are incremented in the step that makes the transition, after every check and after
#   the replay of a request key, so a refused or retried call does not count again.
# Per-trial keys are built from the prefix (ARGV[1]) because a claim learns its trial
# only by popping the ready list: {p}:job:{job}:trial:{trial} and its :epochs/:errors.
LUA_COMMON = lua_constants() + """
local function tkey(p, job, tid) return p .. ':job:' .. job .. ':trial:' .. tid end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function encode_event(kind, data)
  local ok, text = pcall(cjson.encode, data)
  if not ok then return nil end
  return {kind, text}
end
local function emit(p, job, ev)
  redis.call('XADD', p .. ':job:' .. job .. ':events', 'MAXLEN', '~', 20000, '*',
             'type', ev[1], 'data', ev[2])
end
local function owns(t, worker, attempt)
  return redis.call('HGET', t, 'state') == TRIAL_RUNNING
     and redis.call('HGET', t, 'worker') == worker
     and redis.call('HGET', t, 'attempts') == attempt
end
local function replay(req)
  if req == '' then return nil end
  local done = redis.call('GET', req)
  if done then return cjson.decode(done) end
  return nil
end
local function remember(req, reply)
  if req ~= '' then redis.call('SET', req, cjson.encode(reply), 'PX', TTL_MS) end
  return reply
end
-- The ready queue: one list per job priority, claimed highest priority first and each
-- first in, first out, so trials queued ahead for a low-priority job (the chief keeps
-- some ready beyond the free slots) never delay a higher-priority job's. Priority 0 is
-- the list KEYS' ready itself; another priority's list is ready .. ':' .. priority, and
-- ready .. ':bands' (ZSET, scored by -priority) names those that may hold trials.
-- A trial's priority is its record's 'priority' (absent: 0).
local function ready_push(ready, t, m, head)
  local prio = tonumber(redis.call('HGET', t, 'priority') or '0') or 0
  local list = ready
  if prio ~= 0 then
    list = ready .. ':' .. prio
    redis.call('ZADD', ready .. ':bands', -prio, list)
  end
  if head then redis.call('LPUSH', list, m) else redis.call('RPUSH', list, m) end
end
local function pop_bands(bands, min, max)
  for _, list in ipairs(redis.call('ZRANGEBYSCORE', bands, min, max)) do
    local m = redis.call('LPOP', list)
    if m then return m end
    redis.call('ZREM', bands, list)  -- empty: listed again by its next push
  end
  return nil
end
local function ready_pop(ready)
  local bands = ready .. ':bands'
  return pop_bands(bands, '-inf', '(0') or redis.call('LPOP', ready)
      or pop_bands(bands, '(0', '+inf')
end
local function ready_lists(ready)  -- every ready list, in the order ready_pop takes them
  local bands = ready .. ':bands'
  local lists = redis.call('ZRANGEBYSCORE', bands, '-inf', '(0')
  table.insert(lists, ready)
  for _, l in ipairs(redis.call('ZRANGEBYSCORE', bands, '(0', '+inf')) do
    table.insert(lists, l)
  end
  return lists
end
local function fenced_out(lock, token)
  return lock ~= '' and redis.call('GET', lock) ~= token
end
-- Gangs (a trial trained by N workers at once; the worker side: worker/gang.py): the
-- members, in rank order, are the trial's 'gang' (JSON list of {worker, address});
-- each member also has 'member:<worker>' (its rank) and, while RUNNING,
-- 'beat:<worker>' (Redis time, ms).
local function gang_members(t)
  local raw = redis.call('HGET', t, 'gang')
  if not raw or raw == '' then return {} end
  local ok, list = pcall(cjson.decode, raw)
  if ok and type(list) == 'table' then return list end
  return {}
end
local function gang_clear(t)  -- the members of the current formation or attempt leave
  for _, m in ipairs(gang_members(t)) do
    if type(m) == 'table' and m.worker then
      redis.call('HDEL', t, 'member:' .. m.worker, 'beat:' .. m.worker)
    end
  end
end
local function is_member(t, worker)
  return redis.call('HGET', t, 'worker') == worker
      or redis.call('HGET', t, 'member:' .. worker) ~= false
end
-- RUNNING -> READY (1) or FAILED when the retry budget is spent (2). The caller checked
-- that the trial is RUNNING; count_attempt '0' gives the attempt back (a shutdown).
-- totals: the telemetry counts HASH (retried or failed grows by one).
local function release_trial(p, ready, leases, inbox, wake, totals, job, tid, reason,
                             count_attempt, now)
  local t = tkey(p, job, tid)
  local m = job .. '/' .. tid
  local worker = redis.call('HGET', t, 'worker') or ''
  local attempts = tonumber(redis.call('HGET', t, 'attempts') or '0')
  if count_attempt == '0' then attempts = attempts - 1 end
  local max_retries = tonumber(redis.call('HGET', t, 'max_retries') or '0') or 0
  local retry = count_attempt == '0' or attempts <= max_retries
  local ev = {'trial_retry', cjson.encode({trial = tid, worker = worker, attempt = attempts,
                                          reason = reason})}
  if not retry then
    ev = {'trial_failed', cjson.encode({trial = tid, worker = worker, attempt = attempts,
                                        error = reason})}
  end
  redis.call('ZREM', leases, m)
  gang_clear(t)  -- every member's attempt ends with this one (a gang fails as a whole)
  redis.call('HSET', t, 'attempts', attempts)
  redis.call('RPUSH', t .. ':errors', reason)
  emit(p, job, ev)
  if retry then
    redis.call('HSET', t, 'state', TRIAL_READY, 'worker', '', 'gang', '', 'last_error', reason)
    ready_push(ready, t, m, true)
    redis.call('LPUSH', wake, '1')
    redis.call('HINCRBY', totals, 'retried', 1)
    return 1
  end
  redis.call('HSET', t, 'state', TRIAL_FAILED, 'error', reason, 'finished', now)
  redis.call('XADD', inbox, '*', 'type', 'end', 'job', job, 'trial', tid,
             'state', TRIAL_FAILED, 'error', reason)
  redis.call('HINCRBY', totals, 'failed', 1)
  return 2
end
""".replace("TTL_MS", str(REQUEST_TTL_MS)) + telemetry.lua_observe()

# Gang formation, used by the claim and by a forming member's wait.
LUA_GANG = """
-- FORMING -> READY at the tail of its priority's ready list: the trials queued behind it
-- go first.
local function gang_dissolve(p, ready, forming, job, tid, reason)
  local t = tkey(p, job, tid)
  gang_clear(t)
  redis.call('HSET', t, 'state', TRIAL_READY, 'gang', '')
  redis.call('ZREM', forming, job .. '/' .. tid)
  ready_push(ready, t, job .. '/' .. tid, false)
  emit(p, job, {'trial_gang_dissolved', cjson.encode({trial = tid, reason = reason})})
end
-- The last member joined: FORMING -> RUNNING for every member at once, one attempt, one
-- lease (renewed by any member; a member that stops beating fails the gang, gang_check).
local function gang_start(p, leases, forming, totals, job, tid, members, lease_ms, now)
  local t = tkey(p, job, tid)
  local attempts = tonumber(redis.call('HGET', t, 'attempts') or '0') + 1
  local workers = {}
  for rank, m in ipairs(members) do
    redis.call('HSET', t, 'member:' .. m.worker, rank - 1, 'beat:' .. m.worker, now)
    workers[rank] = m.worker
  end
  redis.call('HSET', t, 'attempts', attempts, 'state', TRIAL_RUNNING, 'worker', members[1].worker,
             'started', now, 'gang', cjson.encode(members))
  redis.call('ZREM', forming, job .. '/' .. tid)
  redis.call('ZADD', leases, now + lease_ms, job .. '/' .. tid)
  emit(p, job, {'trial_started', cjson.encode(
    {trial = tid, worker = members[1].worker, attempt = attempts, workers = workers})})
  redis.call('HINCRBY', totals, 'started', 1)
end
-- What a member of a running gang is told: the claim (as a single claim's reply: its
-- start time names the attempt's directory), the members and its rank.
local function gang_reply(p, job, tid, worker)
  local t = tkey(p, job, tid)
  return {job, tid, tostring(redis.call('HGET', t, 'attempts')),
          redis.call('HGET', t, 'values') or '{}', tostring(redis.call('LLEN', t .. ':errors')),
          tostring(redis.call('HGET', t, 'started') or ''),
          redis.call('HGET', t, 'gang'), tostring(redis.call('HGET', t, 'member:' .. worker))}
end
-- The priority of the best trial a free worker could start from the ready queue (nil:
-- none): the first READY entry among the first few of each list, lists in priority
-- order; a gang trial counts only when enough workers are alive to open it.
local function best_ready_priority(p, ready, alive)
  for _, list in ipairs(ready_lists(ready)) do
    for _, m in ipairs(redis.call('LRANGE', list, 0, 15)) do
      local sep = string.find(m, '/', 1, true)
      if sep then
        local t = tkey(p, string.sub(m, 1, sep - 1), string.sub(m, sep + 1))
        if redis.call('HGET', t, 'state') == TRIAL_READY
            and (tonumber(redis.call('HGET', t, 'gang_size') or '1') or 1) <= alive then
          return tonumber(redis.call('HGET', t, 'priority') or '0') or 0
        end
      end
    end
  end
  return nil
end
-- Join the oldest forming gang this worker is not in yet; dissolve those past their wait.
-- Members whose worker stopped beating (it died while waiting) lose their place first, so
-- a gang never starts with a member that cannot train (and spends a retry on it).
-- A gang of a lower priority than a trial waiting in the ready queue is not joined: the
-- worker takes that trial (job priority holds for gangs as for single trials).
local function gang_join(p, ready, leases, forming, totals, workers, live_since, worker,
                         address, lease_ms, now)
  local best = false  -- best_ready_priority, asked once there is a gang to join
  local function outranked(t)
    if best == false then
      best = best_ready_priority(p, ready, redis.call('ZCOUNT', workers, live_since, '+inf'))
    end
    return best ~= nil and best > (tonumber(redis.call('HGET', t, 'priority') or '0') or 0)
  end
  for _, m in ipairs(redis.call('ZRANGE', forming, 0, 99)) do
    local sep = string.find(m, '/', 1, true)
    if sep then
      local job, tid = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
      local t = tkey(p, job, tid)
      local deadline = tonumber(redis.call('ZSCORE', forming, m))
      if redis.call('HGET', t, 'state') ~= TRIAL_FORMING then
        redis.call('ZREM', forming, m)
      elseif deadline < now then
        gang_dissolve(p, ready, forming, job, tid, 'too few free workers joined in time')
      elseif not redis.call('HGET', t, 'member:' .. worker) and not outranked(t) then
        local members = {}
        for _, member in ipairs(gang_members(t)) do
          if tonumber(redis.call('ZSCORE', workers, member.worker) or '0') >= live_since then
            redis.call('HSET', t, 'member:' .. member.worker, #members)  -- its rank now
            table.insert(members, member)
          else
            redis.call('HDEL', t, 'member:' .. member.worker)
          end
        end
        table.insert(members, {worker = worker, address = address})
        if #members >= (tonumber(redis.call('HGET', t, 'gang_size')) or 1) then
          gang_start(p, leases, forming, totals, job, tid, members, lease_ms, now)
          return gang_reply(p, job, tid, worker)
        end
        redis.call('HSET', t, 'gang', cjson.encode(members), 'member:' .. worker, #members - 1)
        return {job, tid, TRIAL_FORMING}
      end
    end
  end
  return nil
end
"""
