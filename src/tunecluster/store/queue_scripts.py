"""The queue's Lua scripts, one per atomic step of the contract in ``queue.py``.

Each script is ``LUA_COMMON`` (and ``LUA_GANG`` where gangs form) from ``queue_lua.py``
followed by its own body; the comment above each names its KEYS, ARGV and replies.
"""

from __future__ import annotations

from tunecluster.store import telemetry
from tunecluster.store.queue_lua import LUA_COMMON, LUA_GANG

# KEYS: ready, leases, request, totals, forming, workers
# ARGV: prefix, worker, lease_ms, address ('' = this worker cannot join gangs),
#       gang_wait_ms, live_ms (a worker that beat within this is alive)
# Replies: {job, trial, attempt, values, earlier} for a trial of one worker;
# {job, trial, attempt, values, earlier, gang, rank} when this claim completed a gang;
# {job, trial, TRIAL_FORMING} when this worker joined or opened a gang still forming.
CLAIM = LUA_COMMON + LUA_GANG + """
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
        reply = {job, tid, tostring(attempts), values, tostring(earlier), tostring(now)}
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
RENEW = LUA_COMMON + """
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
REPORT_EPOCH = LUA_COMMON + """
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
FINISH = LUA_COMMON + """
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
           'hyperparameters', fields['hyperparameters'] or '',
           'metrics', fields['metrics'] or '', 'best_epoch', fields['best_epoch'] or '',
           'fatal', fields['fatal'] or '')
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
RELEASE = LUA_COMMON + """
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
REAP = LUA_COMMON + LUA_GANG + """
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
CANCEL_READY = LUA_COMMON + """
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
REQUEST_STOP = LUA_COMMON + """
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
GANG_WAIT = LUA_COMMON + LUA_GANG + """
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
GANG_CHECK = LUA_COMMON + """
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
