"""The chief: one active per cluster (a lock with a lease in Redis), any number standing by.

Each tick it (1) reads the inbox (epoch reports, trial ends, submits, cancels) and feeds
the oracles, (2) reaps expired leases, (3) tops up the ready queue to the free worker
slots and no more, so Bayesian suggestions see the latest results, (4) finalizes jobs
whose search is over. Everything it decides is in Redis before it acknowledges the
inbox messages, so a chief killed at any point resumes where it was.
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
from tunecluster.chief.finalize import finalize, summarize_errors
from tunecluster.chief.oracle_host import OracleHost
from tunecluster.errors import SpecError, StoreError
from tunecluster.spec import parse_spec
from tunecluster.spec.models import JobSpec
from tunecluster.store import Store, codec, now_ms, split_member
from tunecluster.store.connection import Backoff, retryable
from tunecluster.store.keys import CHIEF_GROUP
from tunecluster.store.results import build_results

log = logging.getLogger("tunecluster.chief")

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
    dirty: bool = False
    touched: set[str] = field(default_factory=set)


class Chief:
    def __init__(self, store: Store, artifacts_root: str | Path, *,
                 lease_s: float = defaults.LEASE_S, tick_s: float = defaults.CHIEF_TICK_S,
                 lock_s: float = defaults.CHIEF_LOCK_S, chief_id: str | None = None) -> None:
        self.store = store
        self.artifacts = Path(artifacts_root).resolve()
        self.lease_s, self.tick_s, self.lock_s = lease_s, tick_s, lock_s
        self.id = chief_id or f"chief-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.jobs: dict[str, HostedJob] = {}
        self.leader = False
        self._renew_lock = store.client.register_script(_RENEW_LOCK)
        self.stop_event = threading.Event()
        self._last_tick = time.monotonic()
        self._reap_after = 0.0
        # --- Ray scheduler hook: `scheduler: ray` jobs run in RayJobRunner threads ----
        from tunecluster.ray.backend import RayJobs  # imports no Ray until a job needs it

        self.ray_jobs = RayJobs(store, self.artifacts, self.id)
        # --- end Ray scheduler hook ----------------------------------------------------
        # Refreshed by housekeeping (and on submit) instead of read on every tick: each
        # Redis round trip on the tick is latency added to every trial's hand-out.
        self._housekeeping_s = min(1.0, lease_s / 4)
        self._next_housekeeping = 0.0
        self._active: list[str] = []
        self._slots = 0

    # --- main loop -------------------------------------------------------------------

    def run(self) -> None:
        import keras_tuner  # noqa: F401 - paid once at start, not on the first submit

        backoff = Backoff()
        log.info("chief %s starting", self.id)
        while not self.stop_event.is_set():
            try:
                if not self._hold_lock():
                    if self.leader:
                        log.warning("lost the chief lock; standing by")
                        self.ray_jobs.stop_all()  # Ray scheduler hook: the new chief resumes
                    self.leader = False
                    self.jobs.clear()
                    self.stop_event.wait(min(1.0, self.lock_s / 4))
                    continue
                if not self.leader:
                    log.info("chief %s is now active", self.id)
                    self.leader = True
                    self._ensure_group()
                    self._drain(pending=True)
                self.tick()
                backoff.ok()
            except Exception as exc:  # noqa: BLE001 - the chief must outlive any one failure
                if retryable(exc):
                    self.leader = False
                    self.jobs.clear()
                    backoff.failed(exc)
                else:
                    raise
        self.ray_jobs.stop_all()  # Ray scheduler hook: unfinished Ray runs resume elsewhere
        self._release_lock()

    def tick(self) -> None:
        started = time.monotonic()
        if started - self._last_tick > self.lease_s / 2:
            # We were stalled (Redis down, process paused): workers could not renew
            # their leases either, so give them one lease to catch up before reaping.
            self._reap_after = started + self.lease_s
        self._last_tick = started
        self._drain(pending=False, block_ms=int(self.tick_s * 1000))
        self._finish_jobs()
        self.ray_jobs.tick()  # Ray scheduler hook: start a RayJobRunner per Ray job, once

    def _housekeeping(self) -> None:
        """The slower duties: reaping, the worker census, the job list, the probe beat."""
        self._next_housekeeping = time.monotonic() + self._housekeeping_s
        if time.monotonic() >= self._reap_after:
            self._reap()
        self._slots = self.store.workers.total_slots(self.lease_s)
        self._active = self.store.jobs.active()
        self.store.client.set(self.store.keys.chief_beat, now_ms(), px=int(self.lock_s * 3000))

    def stop(self) -> None:
        self.stop_event.set()

    # --- leadership --------------------------------------------------------------------

    def _hold_lock(self) -> bool:
        return bool(self._renew_lock(keys=[self.store.keys.chief_lock],
                                     args=[self.id, int(self.lock_s * 1000)]))

    def _release_lock(self) -> None:
        try:
            if self.store.client.get(self.store.keys.chief_lock) == self.id:
                self.store.client.delete(self.store.keys.chief_lock)
        except redis.RedisError:
            pass

    def _ensure_group(self) -> None:
        try:
            self.store.client.xgroup_create(self.store.keys.inbox, CHIEF_GROUP, id="0",
                                            mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- inbox ----------------------------------------------------------------------------

    def _drain(self, pending: bool, block_ms: int | None = None) -> None:
        """One round: read the inbox, feed the oracles, queue new trials, commit.

        Everything this round decided (oracle states, new trials, the inbox
        acknowledgements) is written in one MULTI transaction, so a chief killed at any
        point either did all of it or none, and a round costs three round trips to Redis:
        the read, the free-slot count, the commit. ``pending`` re-reads what a previous
        active chief received but never acknowledged, until nothing is left.
        """
        keys = self.store.keys
        while True:
            try:
                rows = self.store.client.xreadgroup(
                    CHIEF_GROUP, "chief", {keys.inbox: "0" if pending else ">"}, count=500,
                    block=None if pending else block_ms)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._ensure_group()
                continue
            entries = [e for _stream, items in rows or [] for e in items]
            for _entry_id, fields in entries:
                self._handle(fields or {})
            if not pending and time.monotonic() >= self._next_housekeeping:
                self._housekeeping()
            pipe = self.store.client.pipeline(transaction=True)
            if not pending:
                self._top_up(pipe)
            self._stage_oracles(pipe)
            if entries:
                ack = [entry_id for entry_id, _ in entries]
                pipe.xack(keys.inbox, CHIEF_GROUP, *ack)
                pipe.xdel(keys.inbox, *ack)
            if len(pipe):
                pipe.execute()
            if not (pending and entries):
                return

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
                self.store.queue.request_stop(job_id, trial)
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
        if state not in ("COMPLETED", "FAILED", "CANCELLED"):
            return
        # Its epochs came through this same stream, before its end: the oracle has them.
        try:
            hosted.host.end(trial, completed=state == "COMPLETED", message=error or None)
        except RuntimeError as exc:  # KerasTuner: too many consecutive failed trials
            hosted.failure = (f"{hosted.spec.search.max_consecutive_failed_trials} consecutive"
                              f" trials failed: {str(exc).splitlines()[-1][:300]}")
        hosted.dirty = True
        hosted.touched.add(trial)

    def _stage_oracles(self, pipe: redis.client.Pipeline) -> None:
        """Add the changed oracles' state to the round's transaction."""
        for hosted in self.jobs.values():
            if hosted.dirty and hosted.host is not None:
                pipe.set(self.store.keys.oracle(hosted.id), hosted.host.state_json())
                if hosted.touched:
                    pipe.hset(self.store.keys.oracle_trials(hosted.id), mapping={
                        tid: hosted.host.trial_json(tid) for tid in hosted.touched
                        if hosted.host.knows(tid)})
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
            if self.store.jobs.exists(job_id):  # foreign or corrupt: end it, do not retry
                log.error("job %s cannot be read: %s", job_id, exc)
                self.store.jobs.set_state(job_id, "failed", error=f"job cannot be read: {exc}")
            else:
                self.store.client.zrem(self.store.keys.jobs_active, job_id)
            return None
        if record.state not in ("queued", "running", "finalizing"):
            return None
        try:
            spec = parse_spec(record.spec)
            uploaded = codec.loads(record.fields.get("files", "[]"), "uploaded files")
            host = None
            if spec.scheduler == "native":
                host = OracleHost.create(spec, record.space, *self.store.jobs.oracle_state(job_id))
        except (SpecError, StoreError, ValueError, KeyError) as exc:
            log.error("job %s cannot be loaded: %s", job_id, exc)
            self.store.jobs.set_state(job_id, "failed", error=f"job cannot be loaded: {exc}")
            return None
        hosted = HostedJob(job_id, spec, host, list(uploaded or []),
                           cancel=record.cancel_requested)
        self.jobs[job_id] = hosted
        if record.state == "queued" and spec.scheduler == "native":
            self.store.jobs.set_state(job_id, "running")
        return hosted

    def _reap(self) -> None:
        now = now_ms()
        for m in self.store.queue.expired(now):
            job, trial = split_member(m)
            outcome = self.store.queue.release(
                job, trial, "worker lost: its lease expired", expired_before=now)
            if outcome:
                log.warning("reaped %s (%s)", m, "retry" if outcome == 1 else "failed")
            elif not self.store.jobs.trial(job, trial).get("state") == "RUNNING":
                self.store.client.zrem(self.store.keys.leases, m)  # stale entry
        self.store.workers.prune(self.lease_s)

    def _top_up(self, pipe: redis.client.Pipeline) -> None:
        """Stage new trials into ``pipe`` for the free slots, no more."""
        if self._slots <= 0 or not self._active:
            return
        free = self._slots - self.store.queue.busy_count()
        if free <= 0:
            return
        for job_id in self._active:
            hosted = self._job(job_id)
            if (hosted is None or hosted.host is None or hosted.exhausted or hosted.failure
                    or hosted.cancel):
                continue
            while free > 0:
                status, trial, values = hosted.host.create_trial()
                if status == "RUNNING" and trial is not None:
                    # The oracle that made it is written once per round by _stage_oracles,
                    # later in this same transaction, not once per trial here.
                    self.store.queue.enqueue(job_id, trial, values,
                                             hosted.spec.search.max_retries_per_trial,
                                             None, pipe=pipe)
                    hosted.dirty = True
                    hosted.touched.add(trial)
                    free -= 1
                elif status == "IDLE":
                    break
                else:
                    hosted.exhausted = True
                    hosted.dirty = True
                    break
            if free <= 0:
                return

    def _finish_jobs(self) -> None:
        for job_id in list(self._active):
            hosted = self._job(job_id)
            if hosted is None or hosted.host is None:
                continue
            cancel = hosted.cancel
            if not (hosted.exhausted or hosted.failure or cancel):
                continue
            trials = self.store.jobs.trials(job_id)
            if cancel or hosted.failure:
                for row in trials:
                    if row.get("state") == "READY":
                        self.store.queue.cancel_ready(job_id, row["trial"], "job ended")
                    elif row.get("state") == "RUNNING":
                        self.store.queue.request_stop(job_id, row["trial"])
            if any(row.get("state") in ("READY", "RUNNING") for row in trials):
                continue
            self._finalize(hosted, "cancelled" if cancel else
                           "failed" if hosted.failure else "completed")

    def _finalize(self, hosted: HostedJob, state: str) -> None:
        self.store.jobs.set_state(hosted.id, "finalizing")
        error = hosted.failure
        if state == "failed" and error:
            error = f"{error} | errors: {summarize_errors(build_results(self.store.jobs, hosted.id)['trials'])}"
        resolve = file_resolver(self.store, hosted.id, self.artifacts, hosted.uploaded)
        try:
            results = finalize(self.store, hosted.id, hosted.spec, self.artifacts, state,
                               resolve=resolve, error=error)
            log.info("job %s %s", hosted.id, results["state"])
        except Exception as exc:  # noqa: BLE001 - a broken export must still end the job
            if retryable(exc):
                raise
            log.exception("finalizing %s failed", hosted.id)
            self.store.jobs.set_state(hosted.id, "failed", error=f"finalize failed: {exc}")
        self.jobs.pop(hosted.id, None)
        if hosted.id in self._active:
            self._active.remove(hosted.id)


def run_chief(store: Store, artifacts_root: str | Path, **kwargs: Any) -> Chief:
    chief = Chief(store, artifacts_root, **kwargs)
    chief.run()
    return chief
