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
All scripts are Lua so each step is atomic in Redis, and each checks before it writes:
``queue_scripts.py`` holds them, built from the functions of ``queue_lua.py``.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from tunecluster.errors import WorkerLost
from tunecluster.ids import is_job_id, is_trial_id
from tunecluster.states import TrialState
from tunecluster.store import codec, queue_scripts, telemetry
from tunecluster.store.connection import script
from tunecluster.store.fence import Fence, LostLeadership
from tunecluster.store.keys import Keys, member
from tunecluster.store.queue_lua import REQUEST_TTL_MS

EVENTS_MAXLEN = 20000
STOP, CANCEL = 1, 2  # answers of report_epoch
# A gang that has not filled this long after it was opened gives its places back.
GANG_WAIT_S = float(os.environ.get("TUNECLUSTER_GANG_WAIT_S", "10"))


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
    # When Redis started this attempt (its ms clock, as the trial's ``started``): with
    # the attempt number it names the attempt's directory, so that two runs never share
    # one, even when Redis lost the first claim (a rollback) and counted it again.
    started: str = ""

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
    started = str(row[5]) if len(row) >= 6 else ""
    claim = Claim(job, trial, int(attempt), parsed, resume=int(earlier) > 0,
                  started=started if started.isdigit() else "")
    if len(row) >= 8:
        claim.gang = gang_members(row[6])
        claim.rank = int(row[7])
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


class LostLease(WorkerLost, RuntimeError):
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
        self._claim = script(client, queue_scripts.CLAIM)
        self._renew = script(client, queue_scripts.RENEW)
        self._report = script(client, queue_scripts.REPORT_EPOCH)
        self._finish = script(client, queue_scripts.FINISH)
        self._release = script(client, queue_scripts.RELEASE)
        self._reap = script(client, queue_scripts.REAP)
        self._cancel_ready = script(client, queue_scripts.CANCEL_READY)
        self._request_stop = script(client, queue_scripts.REQUEST_STOP)
        self._gang_wait = script(client, queue_scripts.GANG_WAIT)
        self._gang_check = script(client, queue_scripts.GANG_CHECK)

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
        if not row or len(row) < 8:
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
