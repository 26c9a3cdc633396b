"""The trial queue with leases: the contract between the chief and the workers.

Contract:
- A trial is READY (in ``ready``), RUNNING (owned by one worker *attempt*, with a lease in
  ``leases``), or final: COMPLETED, FAILED, CANCELLED.
- ``claim`` is atomic: one READY trial becomes RUNNING for exactly one worker and its
  ``attempts`` counter grows by one. Claiming is at-least-once: a trial whose lease
  expires is released and claimed again.
- Every write a worker makes about a trial (epoch reports, finish) names its worker id
  and attempt; a write from an attempt that no longer owns the trial is refused, so a
  late worker can never count a trial twice.
- ``release`` is the only way back from RUNNING to READY (or to FAILED when the retry
  budget ``max_retries`` is spent). The chief releases expired leases (it is the only
  reaper); a worker releases the trial of a crashed child or on shutdown.
All scripts are Lua so each step is atomic in Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from tunecluster.store import codec
from tunecluster.store.ids import is_job_id, is_trial_id
from tunecluster.store.keys import Keys, member

EVENTS_MAXLEN = 20000
STOP, CANCEL = 1, 2  # answers of report_epoch

_LUA_COMMON = """
local function tkey(p, job, tid) return p .. ':job:' .. job .. ':trial:' .. tid end
local function event(p, job, kind, data)
  redis.call('XADD', p .. ':job:' .. job .. ':events', 'MAXLEN', '~', 20000, '*',
             'type', kind, 'data', cjson.encode(data))
end
local function owns(t, worker, attempt)
  return redis.call('HGET', t, 'state') == 'RUNNING'
     and redis.call('HGET', t, 'worker') == worker
     and redis.call('HGET', t, 'attempts') == attempt
end
"""

# KEYS: ready, leases | ARGV: prefix, worker, now_ms, lease_ms
_CLAIM = _LUA_COMMON + """
for _ = 1, 1000 do
  local m = redis.call('LPOP', KEYS[1])
  if not m then return false end
  local sep = string.find(m, '/', 1, true)
  if sep then
    local job, tid = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
    local t = tkey(ARGV[1], job, tid)
    if redis.call('HGET', t, 'state') == 'READY' then
      local attempts = redis.call('HINCRBY', t, 'attempts', 1)
      redis.call('HSET', t, 'state', 'RUNNING', 'worker', ARGV[2], 'started', ARGV[3])
      redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), m)
      event(ARGV[1], job, 'trial_started', {trial = tid, worker = ARGV[2], attempt = attempts})
      -- runs before this one that were released (crash, lost lease, shutdown)
      local earlier = redis.call('LLEN', t .. ':errors')
      return {job, tid, tostring(attempts), redis.call('HGET', t, 'values') or '{}',
              tostring(earlier)}
    end
  end
end
return false
"""

# KEYS: leases | ARGV: prefix, worker, expiry_ms, member...
_RENEW = _LUA_COMMON + """
local renewed = 0
for i = 4, #ARGV do
  local m = ARGV[i]
  local sep = string.find(m, '/', 1, true)
  local t = tkey(ARGV[1], string.sub(m, 1, sep - 1), string.sub(m, sep + 1))
  if redis.call('HGET', t, 'state') == 'RUNNING' and redis.call('HGET', t, 'worker') == ARGV[2] then
    redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[3]), m)
    renewed = renewed + 1
  end
end
return renewed
"""

# KEYS: inbox | ARGV: prefix, job, trial, worker, attempt, epoch, metrics_json, now_ms
# Returns -1 when the attempt no longer owns the trial, 2 when its job was cancelled,
# 1 when the chief asks it to stop (the oracle's early stop), else 0.
_REPORT_EPOCH = _LUA_COMMON + """
local t = tkey(ARGV[1], ARGV[2], ARGV[3])
if not owns(t, ARGV[4], ARGV[5]) then return -1 end
redis.call('HSET', t .. ':epochs', ARGV[6], ARGV[7])
redis.call('HSET', t, 'last_epoch', ARGV[6], 'updated', ARGV[8])
redis.call('XADD', KEYS[1], '*', 'type', 'epoch', 'job', ARGV[2], 'trial', ARGV[3],
           'epoch', ARGV[6], 'metrics', ARGV[7])
event(ARGV[1], ARGV[2], 'epoch', {trial = ARGV[3], epoch = tonumber(ARGV[6]),
                                  metrics = cjson.decode(ARGV[7])})
if redis.call('HGET', ARGV[1] .. ':job:' .. ARGV[2], 'cancel') == '1' then return 2 end
if redis.call('HGET', t, 'stop') == '1' then return 1 end
return 0
"""

# KEYS: inbox, leases | ARGV: prefix, job, trial, worker, attempt, state, fields_json, now_ms
_FINISH = _LUA_COMMON + """
local t = tkey(ARGV[1], ARGV[2], ARGV[3])
if not owns(t, ARGV[4], ARGV[5]) then return 0 end
local fields = cjson.decode(ARGV[7])
for k, v in pairs(fields) do redis.call('HSET', t, k, v) end
redis.call('HSET', t, 'state', ARGV[6], 'finished', ARGV[8])
redis.call('ZREM', KEYS[2], ARGV[2] .. '/' .. ARGV[3])
redis.call('XADD', KEYS[1], '*', 'type', 'end', 'job', ARGV[2], 'trial', ARGV[3],
           'state', ARGV[6], 'error', fields['error'] or '')
event(ARGV[1], ARGV[2], 'trial_' .. string.lower(ARGV[6]),
      {trial = ARGV[3], worker = ARGV[4], attempt = tonumber(ARGV[5]),
       score = fields['score'], error = fields['error']})
return 1
"""

# KEYS: ready, leases, inbox, wake
# ARGV: prefix, job, trial, worker ('' = any), attempt ('' = any), reason, now_ms,
#       count_attempt ('1' | '0'), expired_before_ms ('' = no lease check)
# Returns 0 (not released), 1 (back to READY), 2 (FAILED: retries spent).
_RELEASE = _LUA_COMMON + """
local t = tkey(ARGV[1], ARGV[2], ARGV[3])
local m = ARGV[2] .. '/' .. ARGV[3]
if redis.call('HGET', t, 'state') ~= 'RUNNING' then return 0 end
if ARGV[4] ~= '' and redis.call('HGET', t, 'worker') ~= ARGV[4] then return 0 end
if ARGV[5] ~= '' and redis.call('HGET', t, 'attempts') ~= ARGV[5] then return 0 end
if ARGV[9] ~= '' then
  local expiry = redis.call('ZSCORE', KEYS[2], m)
  if expiry and tonumber(expiry) > tonumber(ARGV[9]) then return 0 end
end
redis.call('ZREM', KEYS[2], m)
local worker = redis.call('HGET', t, 'worker')
if ARGV[8] == '0' then redis.call('HINCRBY', t, 'attempts', -1) end
local attempts = tonumber(redis.call('HGET', t, 'attempts'))
local max_retries = tonumber(redis.call('HGET', t, 'max_retries') or '0')
redis.call('RPUSH', t .. ':errors', ARGV[6])
if ARGV[8] == '0' or attempts <= max_retries then
  redis.call('HSET', t, 'state', 'READY', 'worker', '', 'last_error', ARGV[6])
  redis.call('LPUSH', KEYS[1], m)
  redis.call('LPUSH', KEYS[4], '1')
  event(ARGV[1], ARGV[2], 'trial_retry', {trial = ARGV[3], worker = worker,
                                          attempt = attempts, reason = ARGV[6]})
  return 1
end
redis.call('HSET', t, 'state', 'FAILED', 'error', ARGV[6], 'finished', ARGV[7])
redis.call('XADD', KEYS[3], '*', 'type', 'end', 'job', ARGV[2], 'trial', ARGV[3],
           'state', 'FAILED', 'error', ARGV[6])
event(ARGV[1], ARGV[2], 'trial_failed', {trial = ARGV[3], worker = worker,
                                         attempt = attempts, error = ARGV[6]})
return 2
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Claim:
    job: str
    trial: str
    attempt: int
    values: dict[str, Any]
    resume: bool = False  # an earlier run was interrupted: continue from its checkpoint
    claimed_at: float = field(default_factory=time.time)

    @property
    def member(self) -> str:
        return member(self.job, self.trial)


class LostLease(RuntimeError):
    """This attempt no longer owns the trial (its lease expired and it was reaped)."""


class TrialQueue:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.k = keys
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._report = client.register_script(_REPORT_EPOCH)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)

    # --- worker side -----------------------------------------------------------------

    def claim(self, worker: str, lease_s: float) -> Claim | None:
        row = self._claim(keys=[self.k.ready, self.k.leases],
                          args=[self.k.p, worker, now_ms(), int(lease_s * 1000)])
        if not row:
            return None
        job, trial, attempt, values, earlier = row
        if not (is_job_id(job) and is_trial_id(trial)):  # foreign: must never become a path
            self.r.zrem(self.k.leases, member(job, trial))
            return None
        try:
            parsed = codec.loads_object(values, f"values of trial {job}/{trial}")
        except Exception:
            parsed = {}
        return Claim(job, trial, int(attempt), parsed, resume=int(earlier) > 0)

    def renew(self, worker: str, members: Iterable[str], lease_s: float) -> int:
        members = list(members)
        if not members:
            return 0
        return int(self._renew(keys=[self.k.leases],
                               args=[self.k.p, worker, now_ms() + int(lease_s * 1000), *members]))

    def report_epoch(self, claim: Claim, worker: str, epoch: int,
                     metrics: Mapping[str, float]) -> int:
        """Record an epoch: 0 go on, STOP, or CANCEL. Raises LostLease if reaped."""
        answer = int(self._report(
            keys=[self.k.inbox],
            args=[self.k.p, claim.job, claim.trial, worker, claim.attempt, epoch,
                  codec.dumps(dict(metrics)), now_ms()]))
        if answer < 0:
            raise LostLease(f"trial {claim.member} attempt {claim.attempt} lost its lease")
        return answer

    def finish(self, claim: Claim, worker: str, state: str, fields: Mapping[str, Any]) -> bool:
        """Move an owned trial to a final state; False if this attempt no longer owns it."""
        encoded = {k: v if isinstance(v, str) else codec.dumps(v) for k, v in fields.items()}
        return bool(self._finish(
            keys=[self.k.inbox, self.k.leases],
            args=[self.k.p, claim.job, claim.trial, worker, claim.attempt, state,
                  codec.dumps(encoded), now_ms()]))

    def release(self, job: str, trial: str, reason: str, *, worker: str = "",
                attempt: int | None = None, count_attempt: bool = True,
                expired_before: int | None = None) -> int:
        """RUNNING -> READY (1) or -> FAILED when retries are spent (2); 0 if not owned."""
        return int(self._release(
            keys=[self.k.ready, self.k.leases, self.k.inbox, self.k.wake],
            args=[self.k.p, job, trial, worker, "" if attempt is None else attempt, reason,
                  now_ms(), "1" if count_attempt else "0",
                  "" if expired_before is None else expired_before]))

    def wait_for_work(self, timeout_s: float) -> None:
        """Block until the chief queues a trial (or the timeout passes)."""
        self.r.blpop([self.k.wake], timeout=max(timeout_s, 0.01))

    # --- chief side ----------------------------------------------------------------------

    def enqueue(self, job: str, trial: str, values: Mapping[str, Any], max_retries: int,
                oracle_state: str | None, oracle_trial: str = "{}",
                pipe: redis.client.Pipeline | None = None) -> None:
        """Record a new trial, persist the oracle that made it, and queue it: one transaction.

        The oracle's state and the trial become visible together, so a chief restarted at
        any moment never holds an oracle that forgot a queued trial (or the reverse).
        With ``pipe`` (a MULTI pipeline) the commands join the caller's transaction.
        """
        now = now_ms()
        own = pipe is None
        pipe = self.r.pipeline(transaction=True) if pipe is None else pipe
        pipe.hset(self.k.trial(job, trial), mapping={
            "job": job, "trial": trial, "state": "READY", "values": codec.dumps(dict(values)),
            "attempts": 0, "max_retries": max_retries, "worker": "", "created": now,
        })
        pipe.zadd(self.k.trials(job), {trial: now})
        if oracle_state is not None:  # None: the caller's transaction persists the oracle
            pipe.set(self.k.oracle(job), oracle_state)
            pipe.hset(self.k.oracle_trials(job), trial, oracle_trial)
        pipe.rpush(self.k.ready, member(job, trial))
        pipe.lpush(self.k.wake, "1")
        pipe.ltrim(self.k.wake, 0, 999)
        pipe.xadd(self.k.events(job), {"type": "trial_created",
                                       "data": codec.dumps({"trial": trial, "values": dict(values)})},
                  maxlen=EVENTS_MAXLEN, approximate=True)
        if own:
            pipe.execute()

    def request_stop(self, job: str, trial: str) -> None:
        self.r.hset(self.k.trial(job, trial), "stop", "1")

    def cancel_ready(self, job: str, trial: str, reason: str) -> bool:
        """READY -> CANCELLED (a worker popping it later skips it)."""
        key = self.k.trial(job, trial)
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.hget(key, "state") != "READY":
                    return False
                pipe.multi()
                pipe.hset(key, mapping={"state": "CANCELLED", "error": reason,
                                        "finished": now_ms()})
                pipe.xadd(self.k.events(job), {"type": "trial_cancelled",
                                               "data": codec.dumps({"trial": trial})},
                          maxlen=EVENTS_MAXLEN, approximate=True)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def expired(self, at_ms: int | None = None) -> list[str]:
        return list(self.r.zrangebyscore(self.k.leases, "-inf", at_ms or now_ms()))

    def busy_count(self) -> int:
        """Trials holding or waiting for a slot: running plus ready."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(self.k.leases)
        pipe.llen(self.k.ready)
        running, ready = pipe.execute()
        return int(running) + int(ready)

    def running_count(self) -> int:
        return int(self.r.zcard(self.k.leases))

    def ready_count(self) -> int:
        return int(self.r.llen(self.k.ready))
