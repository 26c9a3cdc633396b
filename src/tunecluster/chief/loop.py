"""The chief: one active per cluster (a lock with a lease in Redis), any number standing by.

Each tick it (1) reads the inbox (epoch reports, trial ends, submits, cancels) and feeds
the oracles, (2) reaps expired leases, (3) tops up the ready queue to the free worker
slots and no more, so Bayesian suggestions see the latest results, (4) finalizes jobs
whose search is over. Everything it decides is in Redis before it acknowledges the
inbox messages, so a chief killed at any point resumes where it was.

Fencing: every write the chief makes is conditional on still holding the lock (the
round's commit, the reaper, stop and cancel requests, state changes, finalize), checked
inside the same Lua script that writes. A chief that stalled past its lock, or that a
standby replaced, writes nothing and stands by. Each chief reads the inbox under its own
consumer name; the active one takes over what others left pending. Each round's commit
also checks a counter of committed rounds: if Redis restarted and lost the last writes
(or was restored from an older copy), the chief reloads every job from Redis instead of
writing from stale memory.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tunecluster import defaults
from tunecluster.artifacts import file_resolver
from tunecluster.engine.finalize import (
    FinalizeRetry,
    finalize,
    is_redis_outage,
    one_line,
    summarize_errors,
)
from tunecluster.engine.oracle_host import OracleHost
from tunecluster.errors import SpecError, StoreError
from tunecluster.shutdown import kill_children, on_stop_signal
from tunecluster.spec import parse_spec
from tunecluster.spec.models import JobSpec
from tunecluster.states import OPEN_TRIAL_STATES, JobState, TrialState
from tunecluster.store import Store, codec, telemetry
from tunecluster.store.connection import Backoff, for_role, retryable, stop_retrying
from tunecluster.store.fence import Fence, LostLeadership, StaleState, Writes
from tunecluster.store.keys import CHIEF_GROUP
from tunecluster.store.queue import server_ms
from tunecluster.store.results import build_results

log = logging.getLogger("tunecluster.chief")

# Random and grid searches keep this fraction of the worker slots (rounded down, at
# least one trial) ready beyond the free slots, so that a worker that ends a trial
# claims its next one at once instead of waiting on the chief's round. On 2 workers
# (bench/orchestration.py, 1,000 null trials): 3.4 ms per trial with none ready, 3.2
# with one, 2.8 with two. At 1,000 simulated workers with 1 s trials (bench/scale.py,
# 16 cores), where workers that end together ask for hundreds of trials at once: 0.84
# efficiency with a tenth of the slots, 0.91 with half. Since the ready queue is ordered
# by job priority (store/queue.py), trials kept ready for a job never delay a
# higher-priority job's. Bayesian and Hyperband keep none (each suggestion sees the
# latest results).
# $TUNECLUSTER_READY_AHEAD overrides it (a fraction; 0 turns it off).
READY_AHEAD = float(os.environ.get("TUNECLUSTER_READY_AHEAD", "0.5"))

# At most this many trials are created per round; the next round follows at once.
TOP_UP_CHUNK = 256

# The worker census (total slots) runs every housekeeping, or every this many seconds
# per slot counted when that is longer.
CENSUS_S_PER_SLOT = 0.005

# A finished search's trial records are read at least this often (seconds) while the
# oracle still counts trials running (_finish_jobs).
TRIALS_READ_S = 5.0

# A chief whose main loop has not finished a tick for this long is taken for stuck: its
# lock keeper stops extending the lock, so a standby can take over.
STUCK_AFTER_S = 600.0

_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


@dataclass
class HostedJob:
    id: str
    spec: JobSpec
    host: OracleHost | None
    uploaded: list[str]
    exhausted: bool = False
    cancel: bool = False
    failure: str | None = None
    failure_saved: bool = False
    dirty: bool = False
    touched: set[str] = field(default_factory=set)
    next_trials_read: float = 0.0  # monotonic time of _finish_jobs' next read of trials
    waiting: str = ""  # why its trials cannot start, as last written to the job record
    finalize_retry: FinalizeRetry = field(default_factory=FinalizeRetry)


class _Resync(Exception):
    """Redis restarted under us: reload every job before the next round writes."""


class Chief:
    def __init__(self, store: Store, artifacts_root: str | Path, *,
                 lease_s: float = defaults.LEASE_S, tick_s: float = defaults.CHIEF_TICK_S,
                 lock_s: float = defaults.CHIEF_LOCK_S, chief_id: str | None = None) -> None:
        self.store = store
        self.artifacts = Path(artifacts_root).resolve()
        self.lease_s, self.tick_s, self.lock_s = lease_s, tick_s, lock_s
        self.id = chief_id or f"chief-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.fence = Fence(store.keys.chief_lock, self.id)
        self.jobs: dict[str, HostedJob] = {}
        self.leader = False
        self._renew_lock = store.client.register_script(_RENEW_LOCK)
        self.stop_event = threading.Event()
        self._progress = time.monotonic()  # last time the main loop got through a tick
        self._resync = True  # (re)load hosted jobs from Redis before the next round
        self._reclaim = False  # inbox entries taken over from other consumers are pending
        self._seq = 0  # committed rounds, as Redis counts them (``keys.chief_seq``)
        self._run_id: str | None = None  # the Redis server's run id, to see restarts
        # --- Ray scheduler hook: `scheduler: ray` jobs run in RayJobRunner threads ----
        from tunecluster.ray.jobs import RayJobs  # imports no Ray until a job needs it

        self.ray_jobs = RayJobs(store, self.artifacts, self.id, fence=self.fence)
        # --- end Ray scheduler hook ----------------------------------------------------
        # Refreshed by housekeeping (and on submit) instead of read on every tick: each
        # Redis round trip on the tick is latency added to every trial's hand-out.
        self._housekeeping_s = min(1.0, lease_s / 4)
        self._next_housekeeping = 0.0
        self._next_consumer_prune = 0.0
        self._active: list[str] = []
        self._slots = 0
        self._workers = 0  # live workers at the last census
        self._more = False  # the last top-up stopped at TOP_UP_CHUNK: more to create
        self._next_census = 0.0
        self._lock_check_s = min(self._housekeeping_s, lock_s / 4)
        self._next_lock_check = 0.0
        # The reaper waits a full lease (plus a reconnect back-off) after any stall
        # longer than this: see TrialQueue.reap.
        self._stall_ms = int(max(self.lease_s * 250, 3000 * self._housekeeping_s))
        self._grace_ms = int((self.lease_s + defaults.RECONNECT_BACKOFF_S[1]) * 1000)

    # --- main loop -------------------------------------------------------------------

    def run(self) -> None:
        from tunecluster.engine.keras_free import import_keras_tuner

        if threading.current_thread() is threading.main_thread():
            on_stop_signal("chief", self._stop_now, before_exit=kill_children)
        for_role(self.store.client, longest_block_s=self.tick_s)

        # Once at start, not on the first submit: KerasTuner's own oracles, with Keras
        # (and so TensorFlow) stood in for, as they never call it (keras_free.py).
        import_keras_tuner()
        from tunecluster.engine.evaluator import evaluator

        evaluator().start()  # the test-split scoring, warming up in a child process

        backoff = Backoff(stop=self.stop_event)
        log.info("chief %s starting", self.id)
        keeper = threading.Thread(target=self._keep_lock, daemon=True, name="chief-lock")
        keeper.start()
        while not self.stop_event.is_set():
            try:
                if not self._lock_checked():
                    if self.leader:
                        log.warning("lost the chief lock; standing by")
                        self._step_down()
                    self.stop_event.wait(min(1.0, self.lock_s / 4))
                    continue
                if not self.leader:
                    log.info("chief %s is now active", self.id)
                    self.leader = True
                    self._resync = True
                if self._resync:
                    self._load_from_redis()
                self.tick()
                self._progress = time.monotonic()
                backoff.ok()
            except LostLeadership:
                log.warning("chief %s was deposed: nothing written; standing by", self.id)
                self._step_down()
            except (StaleState, _Resync) as exc:
                log.warning("Redis lost or changed state under the chief (%s); reloading", exc)
                self._resync = True
            except Exception as exc:  # noqa: BLE001 - the chief must outlive any one failure
                if retryable(exc):
                    self._resync = True  # what we hold may no longer match Redis
                    backoff.failed(exc)
                else:
                    raise
        self.ray_jobs.stop_all()  # Ray scheduler hook: unfinished Ray runs resume elsewhere
        self._release_lock()
        evaluator().stop()

    def tick(self) -> None:
        if self._reclaim:
            self._reclaim = False
            self._drain(pending=True)
        self._drain(pending=False, block_ms=int(self.tick_s * 1000))
        self._finish_jobs()
        self.ray_jobs.tick()  # Ray scheduler hook: start a RayJobRunner per Ray job, once

    def _housekeeping(self) -> None:
        """The slower duties: reaping, the worker census, the job list, the probe beat,
        noticing a restarted Redis, taking over inbox entries other chiefs left."""
        self._next_housekeeping = time.monotonic() + self._housekeeping_s
        run_id = self._redis_run_id()
        if self._run_id is not None and run_id != self._run_id:
            self._run_id = None
            raise _Resync(f"Redis restarted (run id {run_id})")
        self._reap()
        if time.monotonic() >= self._next_census:
            # The census reads every worker's record: with many workers, less often
            # (1,000 slots: every 5 s), as it would otherwise take a good part of the
            # chief's time; a worker that joins waits that long to be counted.
            self._workers, self._slots = self.store.workers.census(self.lease_s)
            self._say_who_waits()
            self._next_census = time.monotonic() + max(self._housekeeping_s,
                                                       self._slots * CENSUS_S_PER_SLOT)
        self._active = self.store.jobs.active()
        for gone in set(self.jobs) - set(self._active):  # ended, deleted, or Ray's
            del self.jobs[gone]
        Writes().set(self.store.keys.chief_beat, server_ms(self.store.client),
                     px=int(self.lock_s * 3000)).apply(self.store.client, self.fence)
        if self._take_over_inbox(min_idle_ms=max(2000, int(self.lock_s * 1000))):
            self._reclaim = True

    def _say_who_waits(self) -> None:
        """Write on each job whose trials need more workers than are alive (a gang
        trial, ``resources.workers_per_trial``) why it waits, for ``status``; and clear
        it once enough workers are there."""
        for job_id in self._active:
            hosted = self.jobs.get(job_id)
            if hosted is None or hosted.spec.scheduler == "ray":  # ray/reach.py writes those
                continue
            need = hosted.spec.resources.workers_per_trial
            why = (f"each trial needs {need} workers (resources.workers_per_trial);"
                   f" {self._workers} alive" if 1 < need and self._workers < need else "")
            if why != hosted.waiting:
                writes = Writes().hset(self.store.keys.job(job_id), "waiting", why)
                writes.apply(self.store.client, self.fence)
                hosted.waiting = why

    def stop(self) -> None:
        self.stop_event.set()

    def _stop_now(self) -> None:
        """SIGTERM/SIGINT: stop, and retry no Redis call that fails from now on (an
        outage is not waited out; ``shutdown.STOP_S`` bounds the rest)."""
        self.stop()
        stop_retrying(self.store.client)

    # --- leadership --------------------------------------------------------------------

    def _hold_lock(self) -> bool:
        return bool(self._renew_lock(keys=[self.store.keys.chief_lock],
                                     args=[self.id, int(self.lock_s * 1000)]))

    def _lock_checked(self) -> bool:
        """Whether this chief holds the lock: asked of Redis before every tick while
        standing by, and every ``_lock_check_s`` once active. Every write of an active
        chief is fenced (checked inside the script that writes), so a lock lost between
        checks costs nothing but that round; asking on every tick cost a round trip per
        round."""
        now = time.monotonic()
        if self.leader and now < self._next_lock_check:
            return True
        self._next_lock_check = now + self._lock_check_s
        return self._hold_lock()

    def _keep_lock(self) -> None:
        """Extend the lock between ticks, so a long step (finalize evaluating the test
        split, a Bayesian oracle fitting its Gaussian process on a busy machine) does not
        hand the cluster to a standby that would redo the same step. Only while the main
        loop gets through ticks now and then: a chief stuck for good lets its lock lapse."""
        while not self.stop_event.wait(self.lock_s / 3):
            if not self.leader:
                continue
            if time.monotonic() - self._progress > STUCK_AFTER_S:
                continue
            try:
                if not self.fence.extend(self.store.client, int(self.lock_s * 1000)):
                    self._next_lock_check = 0.0  # lost: the main loop asks on its next tick
            except Exception:  # noqa: BLE001 - the main loop sees the loss itself
                pass

    def _step_down(self) -> None:
        self.leader = False
        self.jobs.clear()
        self._resync = True
        self.ray_jobs.stop_all()  # Ray scheduler hook: the new chief resumes

    def _release_lock(self) -> None:
        try:
            self.fence.release(self.store.client)
        except redis.RedisError:
            pass

    def _load_from_redis(self) -> None:
        """Forget what we hold and start again from Redis: after becoming active, after an
        outage, after Redis restarted or lost writes."""
        self.jobs.clear()
        self._ensure_group()
        self._run_id = self._redis_run_id()
        self._seq = int(self.store.client.get(self.store.keys.chief_seq) or 0)
        self._take_over_inbox(min_idle_ms=0)
        self._next_housekeeping = 0.0
        self._next_census = 0.0
        self._resync = False
        self._drain(pending=True)

    def _redis_run_id(self) -> str:
        return str(self.store.client.info("server").get("run_id", ""))

    def _ensure_group(self) -> None:
        try:
            self.store.client.xgroup_create(self.store.keys.inbox, CHIEF_GROUP, id="0",
                                            mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _take_over_inbox(self, min_idle_ms: int) -> int:
        """Move inbox entries another chief read but never acknowledged (it died, or was
        deposed) to this chief's pending list; returns how many. Also forgets consumers
        of chiefs long gone, so the group does not grow with every restart."""
        inbox, taken, start = self.store.keys.inbox, 0, "0-0"
        while True:
            reply = self.store.client.xautoclaim(inbox, CHIEF_GROUP, self.id, min_idle_ms,
                                                 start_id=start, count=500)
            start, entries = reply[0], reply[1]
            taken += len(entries)
            if start in ("0-0", b"0-0"):
                break
        if time.monotonic() >= self._next_consumer_prune:
            self._next_consumer_prune = time.monotonic() + 300
            for consumer in self.store.client.xinfo_consumers(inbox, CHIEF_GROUP):
                if (consumer["name"] != self.id and int(consumer["pending"]) == 0
                        and int(consumer.get("idle", 0)) > 3_600_000):
                    self.store.client.xgroup_delconsumer(inbox, CHIEF_GROUP, consumer["name"])
        return taken

    # --- inbox ----------------------------------------------------------------------------

    def _drain(self, pending: bool, block_ms: int | None = None) -> None:
        """One round: read the inbox, feed the oracles, queue new trials, commit.

        Everything this round decided (oracle states, new trials, the inbox
        acknowledgements) is applied in one fenced Lua step, so a chief killed at any
        point did all of it or none, a deposed chief does none of it, and a retry of the
        step after a dropped connection does not apply it twice. A round costs two
        round trips to Redis: the read and the commit. ``pending``
        re-reads what this chief (or one it took over from) received but never
        acknowledged, until nothing is left.
        """
        keys = self.store.keys
        while True:
            try:
                entries = self._read_inbox(pending, block_ms)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._ensure_group()
                continue
            round_started = time.monotonic()  # telemetry: the round's work, not its wait
            for _entry_id, fields in entries:
                self._handle(fields or {})
            if not pending and time.monotonic() >= self._next_housekeeping:
                self._housekeeping()
            writes = Writes()
            if not pending:
                self._top_up(writes)
            self._stage_oracles(writes)
            if entries:
                ack = [entry_id for entry_id, _ in entries]
                writes.xack(keys.inbox, CHIEF_GROUP, *ack)
                writes.xdel(keys.inbox, *ack)
            if len(writes):
                # Telemetry: the round's duration travels in its own commit (fenced, once).
                writes.extend(telemetry.observe_ops(keys, telemetry.CHIEF_ROUND,
                                                    time.monotonic() - round_started))
                writes.apply(self.store.client, self.fence,
                             request_key=keys.request(secrets.token_hex(12)),
                             sequence=(keys.chief_seq, self._seq))
                self._seq += 1
            if not (pending and entries):
                return

    def _read_inbox(self, pending: bool, block_ms: int | None) -> list[Any]:
        """The inbox's next entries (``pending``: those read before but never
        acknowledged)."""
        rows = self.store.client.xreadgroup(
            CHIEF_GROUP, self.id, {self.store.keys.inbox: "0" if pending else ">"},
            count=500, block=None if pending or self._more else block_ms)
        return [entry for _stream, items in rows or [] for entry in items]

    def _handle(self, msg: dict[str, str]) -> None:
        kind, job_id = msg.get("type"), msg.get("job", "")
        if not job_id:
            return
        hosted = self._job(job_id)
        if hosted is None or hosted.host is None:
            return
        if kind == "epoch":
            try:
                metrics = codec.loads_object(msg.get("metrics"), "epoch metrics")
                epoch = int(msg.get("epoch", "0"))
            except (StoreError, ValueError):
                log.warning("ignoring a malformed epoch report for %s", job_id)
                return
            trial = msg.get("trial", "")
            if hosted.host.update(trial, epoch, metrics):
                self.store.queue.request_stop(job_id, trial, self.fence)
            hosted.dirty = True
            hosted.touched.add(trial)
        elif kind == "end":
            self._trial_ended(hosted, msg.get("trial", ""), msg)
        elif kind == "cancel":
            hosted.cancel = True
        elif kind == "submitted":
            self._next_housekeeping = 0.0  # list the new job on this tick

    def _trial_ended(self, hosted: HostedJob, trial: str, msg: dict[str, str]) -> None:
        assert hosted.host is not None
        if not hosted.host.is_open(trial):
            return  # already ended: a re-delivered message
        state = msg.get("state")
        error = msg.get("error")
        if state is None:  # a message from an older writer: read the record instead
            row = self.store.jobs.trial(hosted.id, trial)
            state, error = row.get("state"), row.get("error")
        if state not in (TrialState.COMPLETED, TrialState.FAILED, TrialState.CANCELLED):
            return
        # Its epochs came through this same stream, before its end: the oracle has them.
        try:
            hosted.host.end(trial, completed=state == TrialState.COMPLETED, message=error or None,
                            grown_space=msg.get("hyperparameters") or None)
        except RuntimeError as exc:  # KerasTuner: too many consecutive failed trials
            hosted.failure = (f"{hosted.spec.search.max_consecutive_failed_trials} consecutive"
                              f" trials failed: {str(exc).splitlines()[-1][:300]}")
        hosted.dirty = True
        hosted.touched.add(trial)

    def _stage_oracles(self, writes: Writes) -> None:
        """Add the changed oracles' state (and decisions such as a failed search) to the
        round's writes."""
        for hosted in self.jobs.values():
            if hosted.failure and not hosted.failure_saved:
                # Persisted with the oracle that decided it: a chief restarted during the
                # wind-down must not start creating trials for this job again.
                writes.hset(self.store.keys.job(hosted.id), "failure", hosted.failure)
                hosted.failure_saved = True
            if hosted.dirty and hosted.host is not None:
                # Only what changed: the oracle's state without its per-trial parts
                # (a size that does not grow with the trials) and the touched trials.
                writes.set(self.store.keys.oracle(hosted.id), hosted.host.state_json())
                if hosted.touched:
                    writes.hset(self.store.keys.oracle_trials(hosted.id),
                                mapping=hosted.host.trials_json(hosted.touched))
                hosted.dirty = False
                hosted.touched.clear()

    # --- jobs -------------------------------------------------------------------------------

    def _job(self, job_id: str) -> HostedJob | None:
        hosted = self.jobs.get(job_id)
        if hosted is not None:
            return hosted
        try:
            record = self.store.jobs.get(job_id)
        except StoreError as exc:
            if self.store.jobs.exists(job_id):  # foreign or corrupt: one job's error
                # Logged once: quarantine takes it out of the active set for good
                # (failed with the reason where its keys can take that write).
                log.error("job %s cannot be read, skipped: %s", job_id, exc)
                self.store.jobs.quarantine(job_id, f"job cannot be read: {exc}", self.fence)
            else:
                Writes().zrem(self.store.keys.jobs_active, job_id).apply(
                    self.store.client, self.fence)
            return None
        if record.state not in (JobState.QUEUED, JobState.RUNNING, JobState.FINALIZING):
            # Every state change to a final state leaves the active set in the same
            # write: one still there is foreign; not read again on every round.
            Writes().zrem(self.store.keys.jobs_active, job_id).apply(
                self.store.client, self.fence)
            return None
        try:
            spec = parse_spec(record.spec)
            host, seeded = None, []
            if spec.scheduler == "native":
                host, seeded = self._oracle(job_id, spec, record.space)
        except (SpecError, StoreError, ValueError, KeyError) as exc:
            log.error("job %s cannot be loaded: %s", job_id, exc)
            self.store.jobs.quarantine(job_id, f"job cannot be loaded: {exc}", self.fence)
            return None
        failure = record.fields.get("failure") or None
        hosted = HostedJob(job_id, spec, host, list(record.files),
                           cancel=record.cancel_requested, failure=failure,
                           failure_saved=failure is not None)
        if seeded:  # a warm start: written with the round that creates the first trial
            hosted.dirty = True
            hosted.touched.update(seeded)
        self.jobs[job_id] = hosted
        if record.state == JobState.QUEUED and spec.scheduler == "native":
            self.store.jobs.set_state(job_id, JobState.RUNNING, fence=self.fence)
        return hosted

    def _oracle(self, job_id: str, spec: JobSpec,
                space: dict[str, Any]) -> tuple[OracleHost, list[str]]:
        """The job's persisted oracle, or a new one seeded by its ``warm_start`` source
        (and the ids of the trials seeded now, not yet persisted)."""
        state, trials = self.store.jobs.oracle_state(job_id)
        warm = None
        if not state and spec.warm_start is not None:
            source = spec.warm_start.from_
            if not self.store.jobs.exists(source):
                raise StoreError(f"warm_start: job {source!r} no longer exists")
            warm = self.store.jobs.oracle_state(source)[1]
        host = OracleHost.create(spec, space, state, trials, warm_trials=warm)
        return host, host.seeded if warm else []

    def _reap(self) -> None:
        reaped = self.store.queue.reap(self.fence, self._stall_ms, self._grace_ms)
        if reaped.retried or reaped.failed:
            log.warning("reaped %d expired lease(s): %d to retry, %d failed",
                        reaped.retried + reaped.failed, reaped.retried, reaped.failed)
        self.store.workers.prune(self.lease_s)

    def _top_up(self, writes: Writes) -> None:
        """Stage new trials into ``writes`` for the free slots, no more.

        A job with no trial in flight is asked once per round whether or not a slot is
        free: that is how a search that is over gets noticed (and the job finalized)
        while higher-priority jobs hold every slot or no worker is alive. Its trial, if
        the search is not over, waits in the ready queue for the next free slot.

        Random and grid searches, whose suggestions do not depend on results, keep a
        few more trials ready than slots are free (``READY_AHEAD``): a worker that ends
        a trial claims its next one at once instead of waiting for this round.

        The busy slots are counted from the oracles, not from Redis: every trial an
        oracle has not seen end (ready, forming or running) holds or waits for as many
        slots as its job's ``resources.workers_per_trial`` (a running gang of N holds N).
        Ends still in the inbox count until this chief reads them, which only errs
        towards creating fewer trials for a round.
        """
        self._more = False
        if not self._active:
            return
        jobs = [(hosted, hosted.host) for hosted in map(self._job, list(self._active))
                if hosted is not None and hosted.host is not None]
        busy = sum(host.ongoing() * hosted.spec.resources.workers_per_trial
                   for hosted, host in jobs)
        free = self._slots - busy if self._slots > 0 else 0
        ahead = max(1, int(self._slots * READY_AHEAD)) if READY_AHEAD > 0 else 0
        created = 0
        for hosted, host in jobs:
            job_id = hosted.id
            if hosted.exhausted or hosted.failure or hosted.cancel:
                continue
            extra = ahead if hosted.spec.search.algorithm in ("random", "grid") else 0
            need = hosted.spec.resources.workers_per_trial  # slots one trial takes
            budget = free + extra if host.ongoing() > 0 else max(free + extra, 1)
            while budget > 0:
                if created >= TOP_UP_CHUNK:
                    # Commit these now and make the rest on the next round at once
                    # (no wait on the inbox): the first trials start without waiting
                    # for a thousand suggestions.
                    self._more = True
                    return
                status, trial, values = host.create_trial()
                if status == TrialState.RUNNING and trial is not None:
                    # The oracle that made it is written once per round by _stage_oracles,
                    # later in this same step, not once per trial here.
                    self.store.queue.enqueue(job_id, trial, values,
                                             hosted.spec.search.max_retries_per_trial,
                                             None, pipe=writes, gang_size=need,
                                             priority=hosted.spec.priority)
                    hosted.dirty = True
                    hosted.touched.add(trial)
                    budget -= need
                    free -= need
                    created += 1
                elif status == "IDLE":
                    break
                else:
                    hosted.exhausted = True
                    hosted.dirty = True
                    break

    def _finish_jobs(self) -> None:
        for job_id in list(self._active):
            hosted = self._job(job_id)
            if hosted is None or hosted.host is None:
                continue
            cancel = hosted.cancel
            if not (hosted.exhausted or hosted.failure or cancel):
                continue
            # A search that is over waits for its last trials, whose ends reach the
            # oracle through the inbox: reading every trial record (O(trials)) each
            # round until then only confirms what the oracle counts, so it is done
            # when the oracle has no trial left, and every TRIALS_READ_S as a safety net.
            now = time.monotonic()
            if (not (cancel or hosted.failure) and hosted.host.ongoing() > 0
                    and now < hosted.next_trials_read):
                continue
            hosted.next_trials_read = now + TRIALS_READ_S
            trials = self.store.jobs.trials(job_id)
            if cancel or hosted.failure:
                for row in trials:
                    if row.get("state") in (TrialState.READY, TrialState.FORMING):
                        self.store.queue.cancel_ready(job_id, row["trial"], "job ended",
                                                      self.fence)
                    elif row.get("state") == TrialState.RUNNING and row.get("stop") != "1":
                        self.store.queue.request_stop(job_id, row["trial"], self.fence)
            if any(row.get("state") in OPEN_TRIAL_STATES for row in trials):
                continue
            if not hosted.finalize_retry.due():
                continue
            self._finalize(hosted, JobState.CANCELLED if cancel else
                           JobState.FAILED if hosted.failure else JobState.COMPLETED)

    def _finalize(self, hosted: HostedJob, state: str) -> None:
        self.store.jobs.set_state(hosted.id, JobState.FINALIZING, fence=self.fence)
        error = hosted.failure
        if state == JobState.FAILED and error:
            trials = build_results(self.store.jobs, hosted.id)["trials"]
            error = f"{error} | errors: {summarize_errors(trials)}"
        resolve = file_resolver(self.store, hosted.id, self.artifacts, hosted.uploaded)
        try:
            results = finalize(self.store, hosted.id, hosted.spec, self.artifacts, state,
                               resolve=resolve, error=error, fence=self.fence)
            log.info("job %s %s", hosted.id, results["state"])
        except LostLeadership:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken export must still end the job
            if is_redis_outage(exc):
                raise
            if hosted.finalize_retry.again(hosted.id, exc):
                return  # the job stays finalizing until then
            log.exception("finalizing %s failed", hosted.id)
            tries = hosted.finalize_retry.failed
            self.store.jobs.set_state(hosted.id, JobState.FAILED, fence=self.fence, error=(
                f"finalize failed{f' {tries} times' if tries > 1 else ''}: {one_line(exc)}"))
        self.jobs.pop(hosted.id, None)
        if hosted.id in self._active:
            self._active.remove(hosted.id)


def run_chief(store: Store, artifacts_root: str | Path, **kwargs: Any) -> Chief:
    chief = Chief(store, artifacts_root, **kwargs)
    chief.run()
    return chief
