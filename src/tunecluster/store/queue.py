"""The trial queue with leases: the contract between the chief and the workers.

Contract:
- A trial is READY (in the ready queue: a list per job priority, the highest claimed
  first, each first in, first out), RUNNING (owned by one worker *attempt*, with a lease in
  ``leases``), or final: COMPLETED, FAILED, CANCELLED.
- ``claim`` is atomic: one READY trial becomes RUNNING for exactly one worker and its
  ``attempts`` counter grows by one. Claiming is at-least-once: a trial whose lease
  expires is released and claimed again.
- Every write a worker makes about a trial (epoch reports, finish) names its worker id
  and attempt; a write from an attempt that no longer owns the trial is refused, so a
  late worker can never count a trial twice.
- ``release`` is the only way back from RUNNING to READY (or to FAILED when the retry
  budget ``max_retries`` is spent). The chief releases expired leases (it is the only
  reaper, ``reap``, fenced by its lock); a worker releases the trial of a crashed child
  or on shutdown.
- A gang trial (``gang_size`` N > 1, ``resources.workers_per_trial``) goes READY ->
  FORMING (places held by workers: no attempt, no lease) -> RUNNING for its N members at
  once (one attempt, one lease any member renews; rank 0 is its ``worker`` and alone
  reports and finishes). A formation not full within ``GANG_WAIT_S`` goes back to READY
  at the tail; a member's release (its process crashed, a member fell silent:
  ``gang_check``, shutdown) ends the attempt for every member.
- Lease expiry is Redis server time; no host's clock is compared with another's.
- ``claim`` and ``finish`` are safe to retry after a dropped connection (a request key
  replays the first reply); the other calls are idempotent by their checks.
All scripts are Lua so each step is atomic in Redis, and each checks before it writes.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from tunecluster.ids import is_job_id, is_trial_id
from tunecluster.states import TrialState, lua_constants
from tunecluster.store import codec, telemetry
from tunecluster.store.fence import Fence, LostLeadership
from tunecluster.store.keys import Keys, member

EVENTS_MAXLEN = 20000
STOP, CANCEL = 1, 2  # answers of report_epoch
REQUEST_TTL_MS = 600_000  # how long the reply of a non-idempotent call is kept for retries
# A gang that has not filled this long after it was opened gives its places back.
GANG_WAIT_S = float(os.environ.get("TUNECLUSTER_GANG_WAIT_S", "10"))

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
_LUA_COMMON = lua_constants() + """
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
_LUA_GANG = """
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
-- What a member of a running gang is told: the claim, the members and its rank.
local function gang_reply(p, job, tid, worker)
  local t = tkey(p, job, tid)
  return {job, tid, tostring(redis.call('HGET', t, 'attempts')),
          redis.call('HGET', t, 'values') or '{}', tostring(redis.call('LLEN', t .. ':errors')),
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

# KEYS: ready, leases, request, totals, forming, workers
# ARGV: prefix, worker, lease_ms, address ('' = this worker cannot join gangs),
#       gang_wait_ms, live_ms (a worker that beat within this is alive)
# Replies: {job, trial, attempt, values, earlier} for a trial of one worker;
# {job, trial, attempt, values, earlier, gang, rank} when this claim completed a gang;
# {job, trial, TRIAL_FORMING} when this worker joined or opened a gang still forming.
_CLAIM = _LUA_COMMON + _LUA_GANG + """
local done = replay(KEYS[3])
if done then return done end
local now = now_ms()
local p, worker, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
-- a caller of the single-worker contract (3 arguments) takes part in no gang
local address, gang_wait_ms = ARGV[4] or '', tonumber(ARGV[5] or '0')
local live_since = now - tonumber(ARGV[6] or ARGV[3])
if address ~= '' then
  local joined = gang_join(p, KEYS[1], KEYS[2], KEYS[5], KEYS[4], KEYS[6],
                           live_since, worker, address, lease_ms, now)
  if joined then return remember(KEYS[3], joined) end
end
local reply = nil
local skipped = {}  -- gang trials this worker cannot open now: back to the tail
for _ = 1, 1000 do
  local m = ready_pop(KEYS[1])  -- entries that are not READY are dropped
  if not m then break end
  local sep = string.find(m, '/', 1, true)
  if sep then
    local job, tid = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
    local t = tkey(p, job, tid)
    if redis.call('HGET', t, 'state') == TRIAL_READY then
      local size = tonumber(redis.call('HGET', t, 'gang_size') or '1') or 1
      if size > 1 then
        -- Opened only when enough workers are alive: a gang that cannot form must not
        -- hold slots that trials of other jobs could use (the chief says why it waits).
        local alive = redis.call('ZCOUNT', KEYS[6], live_since, '+inf')
        if address == '' or alive < size then
          table.insert(skipped, {t, m})
        else
          redis.call('HSET', t, 'state', TRIAL_FORMING, 'member:' .. worker, 0,
                     'gang', cjson.encode({{worker = worker, address = address}}))
          redis.call('ZADD', KEYS[5], now + gang_wait_ms, m)
          reply = {job, tid, TRIAL_FORMING}
          break
        end
      else
        local attempts = tonumber(redis.call('HGET', t, 'attempts') or '0') + 1
        -- runs before this one that were released (crash, lost lease, shutdown)
        local earlier = redis.call('LLEN', t .. ':errors')
        local values = redis.call('HGET', t, 'values') or '{}'
        redis.call('HSET', t, 'attempts', attempts, 'state', TRIAL_RUNNING, 'worker', worker,
                   'started', now)
        redis.call('ZADD', KEYS[2], now + lease_ms, m)
        emit(p, job, {'trial_started', cjson.encode(
          {trial = tid, worker = worker, attempt = attempts})})
        redis.call('HINCRBY', KEYS[4], 'started', 1)
        reply = {job, tid, tostring(attempts), values, tostring(earlier)}
        break
      end
    end
  end
end
for _, s in ipairs(skipped) do ready_push(KEYS[1], s[1], s[2], false) end
if reply then return remember(KEYS[3], reply) end
return false
"""

# KEYS: leases | ARGV: prefix, worker, lease_ms, member...
_RENEW = _LUA_COMMON + """
local expiry = now_ms() + tonumber(ARGV[3])
local renewed = 0
for i = 4, #ARGV do
  local m = ARGV[i]
  local sep = string.find(m, '/', 1, true)
  if sep then
    local t = tkey(ARGV[1], string.sub(m, 1, sep - 1), string.sub(m, sep + 1))
    if redis.call('HGET', t, 'state') == TRIAL_RUNNING and is_member(t, ARGV[2]) then
      redis.call('ZADD', KEYS[1], 'XX', expiry, m)
      if redis.call('HGET', t, 'member:' .. ARGV[2]) then  -- a gang member's own beat
        redis.call('HSET', t, 'beat:' .. ARGV[2], expiry - tonumber(ARGV[3]))
      end
      renewed = renewed + 1
    end
  end
end
return renewed
"""

# KEYS: inbox | ARGV: prefix, job, trial, worker, attempt, epoch, metrics_json
# Returns -1 when the attempt no longer owns the trial, 2 when its job was cancelled,
# 1 when the chief asks it to stop (the oracle's early stop), else 0.
_REPORT_EPOCH = _LUA_COMMON + """
local t = tkey(ARGV[1], ARGV[2], ARGV[3])
if not owns(t, ARGV[4], ARGV[5]) then return -1 end
local ok, metrics = pcall(cjson.decode, ARGV[7])
if not ok or type(metrics) ~= 'table' then
  return redis.error_reply('epoch metrics are not a JSON object')
end
local ev = encode_event('epoch', {trial = ARGV[3], epoch = tonumber(ARGV[6]), metrics = metrics})
if not ev then
  return redis.error_reply('epoch metrics cannot be encoded (NaN or Infinity?): ' .. ARGV[7])
end
local now = now_ms()
redis.call('HSET', t .. ':epochs', ARGV[6], ARGV[7])
redis.call('HSET', t, 'last_epoch', ARGV[6], 'updated', now)
redis.call('XADD', KEYS[1], '*', 'type', 'epoch', 'job', ARGV[2], 'trial', ARGV[3],
           'epoch', ARGV[6], 'metrics', ARGV[7])
emit(ARGV[1], ARGV[2], ev)
if redis.call('HGET', ARGV[1] .. ':job:' .. ARGV[2], 'cancel') == '1' then return 2 end
if redis.call('HGET', t, 'stop') == '1' then return 1 end
return 0
"""

# KEYS: inbox, leases, request, totals, claim-to-build histogram, last-epoch-to-finished
#       histogram
# ARGV: prefix, job, trial, worker, attempt, state, fields_json
# Returns 1 when recorded (also for a retry of a recorded call), 0 when not owned.
_FINISH = _LUA_COMMON + """
local done = replay(KEYS[3])
if done then return done end
local t = tkey(ARGV[1], ARGV[2], ARGV[3])
if not owns(t, ARGV[4], ARGV[5]) then return 0 end
local ok, fields = pcall(cjson.decode, ARGV[7])
if not ok or type(fields) ~= 'table' then
  return redis.error_reply('trial fields are not a JSON object')
end
for k, v in pairs(fields) do
  if type(v) ~= 'string' then return redis.error_reply('trial field ' .. k .. ' is not text') end
end
local ev = encode_event('trial_' .. string.lower(ARGV[6]),
  {trial = ARGV[3], worker = ARGV[4], attempt = tonumber(ARGV[5]),
   score = fields['score'], error = fields['error']})
if not ev then return redis.error_reply('trial fields cannot be encoded') end
-- The overheads this attempt measured (ms): observed below when they are numbers; an
-- unreadable overhead is not observed, and never refuses the finish.
local overhead = {}
if fields['overhead'] then
  local ok_o, o = pcall(cjson.decode, fields['overhead'])
  if ok_o and type(o) == 'table' then overhead = o end
end
local now = now_ms()
gang_clear(t)  -- the members' marks go; the 'gang' list stays as the trial's record
for k, v in pairs(fields) do redis.call('HSET', t, k, v) end
redis.call('HSET', t, 'state', ARGV[6], 'finished', now)
redis.call('ZREM', KEYS[2], ARGV[2] .. '/' .. ARGV[3])
redis.call('XADD', KEYS[1], '*', 'type', 'end', 'job', ARGV[2], 'trial', ARGV[3],
           'state', ARGV[6], 'error', fields['error'] or '',
           'hyperparameters', fields['hyperparameters'] or '')
emit(ARGV[1], ARGV[2], ev)
local outcome = string.lower(ARGV[6])
if outcome == 'completed' or outcome == 'failed' or outcome == 'cancelled' then
  redis.call('HINCRBY', KEYS[4], outcome, 1)
end
for i, name in ipairs({'claim_to_build_ms', 'last_epoch_to_finished_ms'}) do
  local ms = overhead[name]
  if type(ms) == 'number' and ms == ms and ms < math.huge then
    observe(KEYS[4 + i], i == 1 and '@BUILD@' or '@FINISHED@', math.max(ms, 0) / 1000)
  end
end
return remember(KEYS[3], 1)
""".replace("@BUILD@", telemetry.CLAIM_TO_BUILD.name).replace(
    "@FINISHED@", telemetry.LAST_EPOCH_TO_FINISHED.name)

# A worker gives a trial back (its process crashed, or the worker shuts down).
# KEYS: ready, leases, inbox, wake, totals
# ARGV: prefix, job, trial, worker ('' = any), attempt ('' = any), reason, count_attempt
# Returns 0 (not released: not RUNNING or not this attempt's), 1 (READY), 2 (FAILED).
_RELEASE = _LUA_COMMON + """
local t = tkey(ARGV[1], ARGV[2], ARGV[3])
if redis.call('HGET', t, 'state') ~= TRIAL_RUNNING then return 0 end
if ARGV[4] ~= '' and not is_member(t, ARGV[4]) then return 0 end
if ARGV[5] ~= '' and redis.call('HGET', t, 'attempts') ~= ARGV[5] then return 0 end
return release_trial(ARGV[1], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[2], ARGV[3],
                     ARGV[6], ARGV[7], now_ms())
"""

# The chief's reaper: releases every trial whose lease expired, in one atomic step
# (a lease renewed or claimed meanwhile cannot be removed by a stale check).
# A reaper that has not run for stall_ms (Redis was down or restarted, or the chief was
# stalled or replaced) cannot tell dead workers from workers that could not reach Redis:
# it then reaps nothing for grace_ms, a full lease for every worker to renew.
# It also dissolves gangs whose formation outlived its wait (their members may all be
# gone, so no member's own wait would ever see it run out).
# KEYS: leases, ready, inbox, wake, lock, reaper_last, reaper_grace, totals, forming
# ARGV: prefix, token, stall_ms, grace_ms, reason, limit
# Returns -1 when the caller no longer holds the chief lock, else {retried, failed, stale}.
_REAP = _LUA_COMMON + _LUA_GANG + """
if fenced_out(KEYS[5], ARGV[2]) then return -1 end
local now = now_ms()
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', now, 'LIMIT', 0, 100)) do
  local sep = string.find(m, '/', 1, true)
  if sep and redis.call('HGET', tkey(ARGV[1], string.sub(m, 1, sep - 1),
                                    string.sub(m, sep + 1)), 'state') == TRIAL_FORMING then
    gang_dissolve(ARGV[1], KEYS[2], KEYS[9], string.sub(m, 1, sep - 1), string.sub(m, sep + 1),
                  'too few free workers joined in time')
  else
    redis.call('ZREM', KEYS[9], m)
  end
end
local last = tonumber(redis.call('GET', KEYS[6]) or '')
redis.call('SET', KEYS[6], now)
-- No mark at all: a new Redis (nothing to spare) or one that lost its data (spare all).
if (last == nil and redis.call('ZCARD', KEYS[1]) > 0)
   or (last ~= nil and now - last > tonumber(ARGV[3])) then
  redis.call('SET', KEYS[7], now + tonumber(ARGV[4]))
end
local grace = tonumber(redis.call('GET', KEYS[7]) or '0') or 0
if now < grace then return {0, 0, 0} end
local counts = {0, 0, 0}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
for _, m in ipairs(expired) do
  local sep = string.find(m, '/', 1, true)
  local t = sep and tkey(ARGV[1], string.sub(m, 1, sep - 1), string.sub(m, sep + 1))
  if t and redis.call('HGET', t, 'state') == TRIAL_RUNNING then
    local outcome = release_trial(ARGV[1], KEYS[2], KEYS[1], KEYS[3], KEYS[4], KEYS[8],
                                  string.sub(m, 1, sep - 1), string.sub(m, sep + 1),
                                  ARGV[5], '1', now)
    counts[outcome] = counts[outcome] + 1
  else
    redis.call('ZREM', KEYS[1], m)  -- a stale entry: the trial is no longer running
    counts[3] = counts[3] + 1
  end
end
local reaped = counts[1] + counts[2]
if reaped > 0 then redis.call('HINCRBY', KEYS[8], 'reaped', reaped) end
return counts
"""

# The chief's other conditional writes, fenced by its lock.
# KEYS: lock, trial, totals, forming | ARGV: token, prefix, job, trial, reason
# Returns -1 fenced out, 0 not READY (nor FORMING), 1 cancelled.
_CANCEL_READY = _LUA_COMMON + """
if fenced_out(KEYS[1], ARGV[1]) then return -1 end
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= TRIAL_READY and state ~= TRIAL_FORMING then return 0 end
if state == TRIAL_FORMING then  -- its members see it gone and go back to claiming
  gang_clear(KEYS[2])
  redis.call('ZREM', KEYS[4], ARGV[3] .. '/' .. ARGV[4])
end
local ev = {'trial_cancelled', cjson.encode({trial = ARGV[4]})}
redis.call('HSET', KEYS[2], 'state', TRIAL_CANCELLED, 'error', ARGV[5], 'finished', now_ms())
emit(ARGV[2], ARGV[3], ev)
redis.call('HINCRBY', KEYS[3], 'cancelled', 1)
return 1
"""

# KEYS: lock, trial | ARGV: token. Returns -1 fenced out, 0 not running, 1 asked.
_REQUEST_STOP = _LUA_COMMON + """
if fenced_out(KEYS[1], ARGV[1]) then return -1 end
if redis.call('HGET', KEYS[2], 'state') ~= TRIAL_RUNNING then return 0 end
redis.call('HSET', KEYS[2], 'stop', '1')
return 1
"""


# A member of a forming gang waits: KEYS: ready, forming
# ARGV: prefix, job, trial, worker, leave ('1': this worker gives up its place)
# Replies the gang reply (gang_reply) once RUNNING, {TRIAL_FORMING} while it forms, and
# {'GONE'} when it was dissolved (its wait ran out, a member left), cancelled or started
# without this worker. A member leaving, or the first to see the wait run out, dissolves it.
_GANG_WAIT = _LUA_COMMON + _LUA_GANG + """
local t = tkey(ARGV[1], ARGV[2], ARGV[3])
local m = ARGV[2] .. '/' .. ARGV[3]
local state = redis.call('HGET', t, 'state')
local rank = redis.call('HGET', t, 'member:' .. ARGV[4])
if state == TRIAL_RUNNING and rank then return gang_reply(ARGV[1], ARGV[2], ARGV[3], ARGV[4]) end
if state ~= TRIAL_FORMING or not rank then return {'GONE'} end
local deadline = tonumber(redis.call('ZSCORE', KEYS[2], m) or '0')
if ARGV[5] == '1' then
  gang_dissolve(ARGV[1], KEYS[1], KEYS[2], ARGV[2], ARGV[3], 'member ' .. ARGV[4] .. ' left')
  return {'GONE'}
end
if deadline < now_ms() then
  gang_dissolve(ARGV[1], KEYS[1], KEYS[2], ARGV[2], ARGV[3],
                'too few free workers joined in time')
  return {'GONE'}
end
return {TRIAL_FORMING}
"""

# A member of a running gang checks on the others (and says it is alive).
# KEYS: ready, leases, inbox, wake, totals
# ARGV: prefix, job, trial, worker, attempt, peer_timeout_ms
# Replies {'OK'}, {'GONE'} (the attempt ended: finished, released, reaped, cancelled) or
# {'RELEASED', reason} when this call found a member silent for peer_timeout_ms and
# released the trial for every member. A member that was itself silent that long (Redis
# was unreachable for everyone, or this host paused) only beats: it judges no one until
# the others had a chance to beat too, so an outage does not spend a retry.
_GANG_CHECK = _LUA_COMMON + """
local t = tkey(ARGV[1], ARGV[2], ARGV[3])
if redis.call('HGET', t, 'state') ~= TRIAL_RUNNING or redis.call('HGET', t, 'attempts') ~= ARGV[5]
   or not redis.call('HGET', t, 'member:' .. ARGV[4]) then
  return {'GONE'}
end
local now = now_ms()
local timeout = tonumber(ARGV[6])
local mine = tonumber(redis.call('HGET', t, 'beat:' .. ARGV[4]) or '0') or 0
redis.call('HSET', t, 'beat:' .. ARGV[4], now)
if now - mine > timeout then return {'OK'} end
for _, m in ipairs(gang_members(t)) do
  if m.worker ~= ARGV[4] then
    local beat = tonumber(redis.call('HGET', t, 'beat:' .. m.worker) or '0') or 0
    if now - beat > timeout then
      local reason = 'gang member ' .. m.worker .. ' lost: silent for '
                     .. string.format('%.1f', (now - beat) / 1000) .. ' s'
      release_trial(ARGV[1], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[2], ARGV[3],
                    reason, '1', now)
      return {'RELEASED', reason}
    end
  end
end
return {'OK'}
"""


def now_ms() -> int:
    """This host's wall clock in ms: for records people read (created, finished), never
    for times another host compares (those come from Redis, see ``server_ms``)."""
    return int(time.time() * 1000)


def server_ms(client: redis.Redis) -> int:
    """Redis server time in ms: the one clock every host agrees on."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


@dataclass
class Claim:
    job: str
    trial: str
    attempt: int
    values: dict[str, Any]
    resume: bool = False  # an earlier run was interrupted: continue from its checkpoint
    claimed_at: float = field(default_factory=time.time)
    # A gang trial: every member ({worker, address}, in rank order) and this one's rank.
    gang: list[dict[str, str]] | None = None
    rank: int = 0
    # This worker holds a place in a gang that is still forming (``gang_wait``).
    forming: bool = False

    @property
    def member(self) -> str:
        return member(self.job, self.trial)


def _claim_from_reply(row: list[Any]) -> Claim | None:
    """A claim or gang reply of the scripts as a ``Claim`` (None: the names are foreign)."""
    job, trial = row[0], row[1]
    if not (is_job_id(job) and is_trial_id(trial)):  # foreign: must never become a path
        return None
    if len(row) == 3:
        return Claim(job, trial, 0, {}, forming=True)
    attempt, values, earlier = row[2], row[3], row[4]
    try:
        parsed = codec.loads_object(values, f"values of trial {job}/{trial}")
    except Exception:
        parsed = {}
    claim = Claim(job, trial, int(attempt), parsed, resume=int(earlier) > 0)
    if len(row) >= 7:
        claim.gang = gang_members(row[5])
        claim.rank = int(row[6])
    return claim


def gang_members(raw: str | None) -> list[dict[str, str]]:
    """The members of a trial's ``gang`` field, in rank order (empty when unreadable)."""
    try:
        members = codec.loads(raw or "[]", "gang members")
    except Exception:
        return []
    if not isinstance(members, list):
        return []
    return [{"worker": str(m.get("worker", "")), "address": str(m.get("address", ""))}
            for m in members if isinstance(m, dict)]


class LostLease(RuntimeError):
    """This attempt no longer owns the trial (its lease expired and it was reaped)."""


@dataclass(frozen=True)
class Reaped:
    retried: int = 0
    failed: int = 0
    stale: int = 0


class TrialQueue:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.k = keys
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._report = client.register_script(_REPORT_EPOCH)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)
        self._reap = client.register_script(_REAP)
        self._cancel_ready = client.register_script(_CANCEL_READY)
        self._request_stop = client.register_script(_REQUEST_STOP)
        self._gang_wait = client.register_script(_GANG_WAIT)
        self._gang_check = client.register_script(_GANG_CHECK)

    def _request_key(self) -> str:
        return self.k.request(secrets.token_hex(12))

    def _claim_keys(self, request_key: str) -> list[str]:
        return [self.k.ready, self.k.leases, request_key, self.k.telemetry_counts,
                self.k.forming, self.k.workers]

    def _finish_keys(self, request_key: str) -> list[str]:
        return [self.k.inbox, self.k.leases, request_key, self.k.telemetry_counts,
                self.k.telemetry_hist(telemetry.CLAIM_TO_BUILD.name),
                self.k.telemetry_hist(telemetry.LAST_EPOCH_TO_FINISHED.name)]

    # --- worker side -----------------------------------------------------------------

    def claim(self, worker: str, lease_s: float, request_key: str | None = None, *,
              address: str = "", gang_wait_s: float = GANG_WAIT_S) -> Claim | None:
        """Pop one READY trial and own it; safe to retry (a lost reply is replayed: redis-py
        re-sends the script with its request key after a dropped connection; a test passes
        ``request_key`` to replay one).

        With ``address`` (``host:port`` where this worker's gang trial process would
        listen) the worker also takes part in gangs: it joins the oldest forming gang it
        is not in, or opens one for a gang trial when enough workers are alive (live: a
        heartbeat within ``lease_s``). A place in a gang still forming comes back as a
        ``Claim`` with ``forming`` set: wait on it with ``gang_wait``; a gang that does not
        fill within ``gang_wait_s`` is dissolved and its trial queued again at the tail."""
        row = self._claim(keys=self._claim_keys(request_key or self._request_key()),
                          args=[self.k.p, worker, int(lease_s * 1000), address,
                                int(gang_wait_s * 1000), int(lease_s * 1000)])
        if not row:
            return None
        claim = _claim_from_reply(row)
        if claim is None:
            self.r.zrem(self.k.leases, member(row[0], row[1]))
        return claim

    def gang_wait(self, forming: Claim, worker: str, leave: bool = False) -> Claim | None:
        """A place in a forming gang: the running gang's ``Claim`` once the last member
        joined, ``forming`` again while it forms, None once it is gone (dissolved,
        cancelled). ``leave`` gives the place up (and dissolves the formation)."""
        row = self._gang_wait(keys=[self.k.ready, self.k.forming],
                              args=[self.k.p, forming.job, forming.trial, worker,
                                    "1" if leave else "0"])
        if row == [TrialState.FORMING]:
            return forming
        if not row or len(row) < 7:
            return None
        return _claim_from_reply(row)

    def gang_check(self, claim: Claim, worker: str, peer_timeout_s: float) -> tuple[str, str]:
        """A running gang member says it is alive and checks the others: ``("OK", "")``,
        ``("GONE", "")`` when the attempt ended, or ``("RELEASED", why)`` when a member
        was silent for ``peer_timeout_s`` and this call released the trial for all."""
        row = self._gang_check(
            keys=[self.k.ready, self.k.leases, self.k.inbox, self.k.wake,
                  self.k.telemetry_counts],
            args=[self.k.p, claim.job, claim.trial, worker, claim.attempt,
                  int(peer_timeout_s * 1000)])
        return str(row[0]), str(row[1]) if len(row) > 1 else ""

    def renew(self, worker: str, members: Iterable[str], lease_s: float) -> int:
        members = list(members)
        if not members:
            return 0
        return int(self._renew(keys=[self.k.leases],
                               args=[self.k.p, worker, int(lease_s * 1000), *members]))

    def report_epoch(self, claim: Claim, worker: str, epoch: int,
                     metrics: Mapping[str, float | None]) -> int:
        """Record an epoch: 0 go on, STOP, or CANCEL. Raises LostLease if reaped."""
        answer = int(self._report(
            keys=[self.k.inbox],
            args=[self.k.p, claim.job, claim.trial, worker, claim.attempt, epoch,
                  codec.dumps(dict(metrics))]))
        if answer < 0:
            raise LostLease(f"trial {claim.member} attempt {claim.attempt} lost its lease")
        return answer

    def finish(self, claim: Claim, worker: str, state: str, fields: Mapping[str, Any],
               request_key: str | None = None) -> bool:
        """Move an owned trial to a final state; False if this attempt no longer owns it.
        Safe to retry: a retried call whose first run was recorded answers True (redis-py
        re-sends the same script and request key after a dropped connection; a test
        passes ``request_key`` to replay one)."""
        encoded = {k: v if isinstance(v, str) else codec.dumps(v) for k, v in fields.items()}
        return bool(self._finish(
            keys=self._finish_keys(request_key or self._request_key()),
            args=[self.k.p, claim.job, claim.trial, worker, claim.attempt, state,
                  codec.dumps(encoded)]))

    def release(self, job: str, trial: str, reason: str, *, worker: str = "",
                attempt: int | None = None, count_attempt: bool = True) -> int:
        """RUNNING -> READY (1) or -> FAILED when retries are spent (2); 0 if not owned."""
        return int(self._release(
            keys=[self.k.ready, self.k.leases, self.k.inbox, self.k.wake,
                  self.k.telemetry_counts],
            args=[self.k.p, job, trial, worker, "" if attempt is None else attempt, reason,
                  "1" if count_attempt else "0"]))

    def wait_for_work(self, timeout_s: float) -> None:
        """Block until the chief queues a trial (or the timeout passes)."""
        self.r.blpop([self.k.wake], timeout=max(timeout_s, 0.01))

    def gang_publish(self, claim: Claim, epoch: int, stop: bool) -> None:
        """Rank 0's decision after ``epoch``: do the members stop (``GangFollower``)?"""
        key = self.k.trial_sync(claim.job, claim.trial)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, f"{claim.attempt}:{epoch}", "1" if stop else "0")
        pipe.pexpire(key, REQUEST_TTL_MS)
        pipe.execute()

    def gang_decision(self, claim: Claim, epoch: int) -> bool | None:
        """Rank 0's decision after ``epoch`` of this attempt; None until it published."""
        value = self.r.hget(self.k.trial_sync(claim.job, claim.trial),
                            f"{claim.attempt}:{epoch}")
        return None if value is None else value == "1"

    def attempt_running(self, claim: Claim) -> bool:
        """Whether ``claim``'s attempt still runs (not finished, released or reaped)."""
        state, attempts = self.r.hmget(self.k.trial(claim.job, claim.trial),
                                       ["state", "attempts"])
        return state == TrialState.RUNNING and attempts == str(claim.attempt)

    # --- chief side ----------------------------------------------------------------------

    def enqueue(self, job: str, trial: str, values: Mapping[str, Any], max_retries: int,
                oracle_state: str | None, oracle_trial: str = "{}",
                pipe: Any = None, gang_size: int = 1, priority: int = 0) -> None:
        """Record a new trial, persist the oracle that made it, and queue it: one transaction.

        The oracle's state and the trial become visible together, so a chief restarted at
        any moment never holds an oracle that forgot a queued trial (or the reverse).
        With ``pipe`` (a MULTI pipeline or a ``fence.Writes``) the commands join the
        caller's atomic step. ``gang_size`` > 1: the trial is trained by that many workers
        at once (``claim``). ``priority``: the job's; the trial is queued behind the
        ready trials of its priority and higher, ahead of any of lower priority.
        """
        now = now_ms()
        own = pipe is None
        pipe = self.r.pipeline(transaction=True) if pipe is None else pipe
        record: dict[str, Any] = {
            "job": job, "trial": trial, "state": TrialState.READY,
            "values": codec.dumps(dict(values)),
            "attempts": 0, "max_retries": max_retries, "worker": "", "created": now,
        }
        if gang_size > 1:
            record["gang_size"] = gang_size
        if priority:
            record["priority"] = priority  # where a release or a dissolve re-queues it
        pipe.hset(self.k.trial(job, trial), mapping=record)
        pipe.zadd(self.k.trials(job), {trial: now})
        if oracle_state is not None:  # None: the caller's transaction persists the oracle
            pipe.set(self.k.oracle(job), oracle_state)
            pipe.hset(self.k.oracle_trials(job), trial, oracle_trial)
        ready = self.k.ready_list(priority)
        if priority:
            pipe.zadd(self.k.ready_bands, {ready: -priority})
        pipe.rpush(ready, member(job, trial))
        pipe.lpush(self.k.wake, "1")
        pipe.ltrim(self.k.wake, 0, 999)
        created = codec.dumps({"trial": trial, "values": dict(values)})
        pipe.xadd(self.k.events(job), {"type": "trial_created", "data": created},
                  maxlen=EVENTS_MAXLEN, approximate=True)
        if own:
            pipe.execute()

    def request_stop(self, job: str, trial: str, fence: Fence = Fence.NONE) -> bool:
        """Ask a RUNNING trial to stop at its next epoch report."""
        answer = int(self._request_stop(keys=[fence.lock_key, self.k.trial(job, trial)],
                                        args=[fence.token]))
        if answer < 0:
            raise LostLeadership("the chief lock is held by another chief")
        return answer == 1

    def cancel_ready(self, job: str, trial: str, reason: str,
                     fence: Fence = Fence.NONE) -> bool:
        """READY -> CANCELLED (a worker popping it later skips it)."""
        answer = int(self._cancel_ready(keys=[fence.lock_key, self.k.trial(job, trial),
                                              self.k.telemetry_counts, self.k.forming],
                                        args=[fence.token, self.k.p, job, trial, reason]))
        if answer < 0:
            raise LostLeadership("the chief lock is held by another chief")
        return answer == 1

    def reap(self, fence: Fence, stall_ms: int, grace_ms: int,
             reason: str = "worker lost: its lease expired", limit: int = 1000) -> Reaped:
        """Release every trial whose lease expired (Redis time), atomically and fenced.

        After a stall of the reaper longer than ``stall_ms`` (Redis down or restarted, the
        chief stalled or replaced) nothing is reaped for ``grace_ms``: workers that were
        alive all along get a full lease to renew before anyone's trial is taken away."""
        k = self.k
        answer = self._reap(
            keys=[k.leases, k.ready, k.inbox, k.wake, fence.lock_key, k.reaper_last,
                  k.reaper_grace, k.telemetry_counts, k.forming],
            args=[k.p, fence.token, int(stall_ms), int(grace_ms), reason, limit])
        if not isinstance(answer, list):
            raise LostLeadership("the chief lock is held by another chief")
        return Reaped(*(int(x) for x in answer))

    def running_count(self) -> int:
        return int(self.r.zcard(self.k.leases))

    def ready_count(self) -> int:
        """Trials in the ready queue, of every priority."""
        pipe = self.r.pipeline(transaction=False)
        for ready in ready_lists(self.r, self.k):
            pipe.llen(ready)
        return sum(int(n) for n in pipe.execute())


def ready_lists(client: redis.Redis, keys: Keys) -> list[str]:
    """The ready queue's lists, highest priority first."""
    above = client.zrangebyscore(keys.ready_bands, "-inf", "(0")
    below = client.zrangebyscore(keys.ready_bands, "(0", "+inf")
    return [*above, keys.ready, *below]


def ready_entries(client: redis.Redis, keys: Keys) -> list[tuple[str, str]]:
    """(list, entry) for every entry of the ready queue, highest priority first."""
    return [(ready, m) for ready in ready_lists(client, keys)
            for m in client.lrange(ready, 0, -1)]
