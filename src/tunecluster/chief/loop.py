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

The parts: ``leadership.py`` (the lock), ``inbox.py`` (the stream the chief reads),
``jobs.py`` (loading the jobs it hosts), ``top_up.py`` (how many trials each round
creates); this module runs the loop that ties them together.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

import redis

from tunecluster import defaults
from tunecluster.artifacts import file_resolver
from tunecluster.chief.jobs import HostedJob, fatal_ends_search, load_job, oracle_failed
from tunecluster.chief.leadership import ChiefLock
from tunecluster.chief.top_up import top_up
from tunecluster.engine.evaluator import evaluator
from tunecluster.engine.finalize import finalize, is_redis_outage, summarize_errors
from tunecluster.engine.scheduling import Scheduler
from tunecluster.errors import RefusedMove, StoreError, one_line
from tunecluster.shutdown import kill_children, on_stop_signal
from tunecluster.states import OPEN_TRIAL_STATES, JobState, TrialState
from tunecluster.store import Store, codec
from tunecluster.store.connection import Backoff, retryable
from tunecluster.store.fence import LostLeadership, StaleState, Writes
from tunecluster.store.results import build_results
from tunecluster.testhook import hang_here

log = logging.getLogger("tunecluster.chief")

# The worker census (total slots) runs every housekeeping, or every this many seconds
# per slot counted when that is longer.
CENSUS_S_PER_SLOT = 0.005

# A finished search's trial records are read at least this often (seconds) while the
# oracle still counts trials running (_finish_jobs).
TRIALS_READ_S = 5.0


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
        self.fence = store.control.fence(self.id)
        self.jobs: dict[str, HostedJob] = {}
        self.leader = False
        self.inbox = store.control.inbox(self.id)
        self.stop_event = threading.Event()
        self._resync = True  # (re)load hosted jobs from Redis before the next round
        self._reclaim = False  # inbox entries taken over from other consumers are pending
        self._seq = 0  # committed rounds, as Redis counts them (``keys.chief_seq``)
        self._run_id: str | None = None  # the Redis server's run id, to see restarts
        # The schedulers beside the chief's own round (which runs `scheduler: native`
        # jobs), each ticked with its loaded jobs (engine/scheduling.py).
        from tunecluster.ray.jobs import RayJobs  # imports no Ray until a job needs it

        self.schedulers: list[Scheduler] = [
            RayJobs(store, self.artifacts, self.id, fence=self.fence)]
        # Refreshed by housekeeping (and on submit) instead of read on every tick: each
        # Redis round trip on the tick is latency added to every trial's hand-out.
        self._housekeeping_s = min(1.0, lease_s / 4)
        self._next_housekeeping = 0.0
        self._active: list[str] = []
        self._slots = 0
        self._workers = 0  # live workers at the last census
        self._more = False  # the last top-up stopped at TOP_UP_CHUNK: more to create
        self._next_census = 0.0
        self.lock = ChiefLock(store, self.fence, self.id, lock_s,
                              check_s=min(self._housekeeping_s, lock_s / 4))
        # The reaper waits a full lease (plus a reconnect back-off) after any stall
        # longer than this: see TrialQueue.reap.
        self._stall_ms = int(max(self.lease_s * 250, 3000 * self._housekeeping_s))
        self._grace_ms = int((self.lease_s + defaults.RECONNECT_BACKOFF_S[1]) * 1000)

    # --- main loop -------------------------------------------------------------------

    def run(self) -> None:
        from tunecluster.engine.keras_free import import_keras_tuner

        if threading.current_thread() is threading.main_thread():
            on_stop_signal("chief", self._stop_now, before_exit=kill_children)
        self.store.for_role(longest_block_s=self.tick_s)

        # Once at start, not on the first submit: KerasTuner's own oracles, with Keras
        # (and so TensorFlow) stood in for, as they never call it (keras_free.py).
        import_keras_tuner()
        backoff = Backoff(stop=self.stop_event)
        log.info("chief %s starting", self.id)
        keeper = threading.Thread(target=self.lock.keep, daemon=True, name="chief-lock",
                                  args=(self.stop_event, lambda: self.leader))
        keeper.start()
        while not self.stop_event.is_set():
            self.round(backoff)
        self._stop_schedulers()  # their unfinished runs resume under the next chief
        self.lock.release()
        evaluator().stop()

    def round(self, backoff: Backoff) -> None:
        """One turn of the main loop: stand by, or tick; a failure costs a round."""
        try:
            if not self.lock.checked(self.leader):
                if self.leader:
                    log.warning("lost the chief lock; standing by")
                    self._step_down()
                self.stop_event.wait(min(1.0, self.lock_s / 4))
                return
            if not self.leader:
                log.info("chief %s is now active", self.id)
                self.leader = True
                self._resync = True
                # the test-split scoring, warming up in a child process: on becoming
                # active, so that a standby chief holds no TensorFlow
                evaluator().start()
            if self._resync:
                self._load_from_redis()
            self.tick()
            self.lock.alive()
            backoff.ok()
        except LostLeadership:
            log.warning("chief %s was deposed: nothing written; standing by", self.id)
            self._step_down()
        except (StaleState, _Resync, RefusedMove) as exc:  # a view Redis no longer holds
            log.warning("Redis lost or changed state under the chief (%s); reloading", exc)
            self._resync = True
        except Exception as exc:  # noqa: BLE001 - the chief must outlive any one failure
            if retryable(exc):
                self._resync = True  # what we hold may no longer match Redis
                backoff.failed(exc)
            else:
                raise

    def tick(self) -> None:
        hang_here("chief_tick")  # a test hook, inert unless set (tunecluster/testhook.py)
        if self._reclaim:
            self._reclaim = False
            self._drain(pending=True)
        self._drain(pending=False, block_ms=int(self.tick_s * 1000))
        self._finish_jobs()
        self._tick_schedulers()

    def _tick_schedulers(self) -> None:
        """Hand each scheduler its active jobs, loaded here (one loader for all)."""
        loaded = [hosted for hosted in map(self._job, list(self._active)) if hosted is not None]
        for scheduler in self.schedulers:
            scheduler.tick([hosted.loaded() for hosted in loaded
                            if hosted.spec.scheduler == scheduler.name])

    def _stop_schedulers(self) -> None:
        for scheduler in self.schedulers:
            scheduler.stop_all()

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
        self.store.control.beat(self.fence, int(self.lock_s * 3000))
        if self.inbox.take_over(min_idle_ms=max(2000, int(self.lock_s * 1000))):
            self._reclaim = True

    def _say_who_waits(self) -> None:
        """Write on each job whose trials need more workers than are alive (a gang
        trial, ``resources.workers_per_trial``) why it waits, for ``status``; and clear
        it once enough workers are there."""
        for job_id in self._active:
            hosted = self.jobs.get(job_id)
            if hosted is None or hosted.spec.scheduler != "native":  # ray/reach.py: Ray's
                continue
            need = hosted.spec.resources.workers_per_trial
            why = (f"each trial needs {need} workers (resources.workers_per_trial);"
                   f" {self._workers} alive" if 1 < need and self._workers < need else "")
            if why != hosted.waiting:
                self.store.apply(self.store.jobs.stage_waiting(Writes(), job_id, why),
                                 self.fence)
                hosted.waiting = why

    def stop(self) -> None:
        self.stop_event.set()

    def _stop_now(self) -> None:
        """SIGTERM/SIGINT: stop, and retry no Redis call that fails from now on (an
        outage is not waited out; ``shutdown.STOP_S`` bounds the rest)."""
        self.stop()
        self.store.stop_retrying()

    # --- leadership --------------------------------------------------------------------

    def _step_down(self) -> None:
        self.leader = False
        self.jobs.clear()
        self._resync = True
        self._stop_schedulers()  # the new chief resumes their runs

    def _load_from_redis(self) -> None:
        """Forget what we hold and start again from Redis: after becoming active, after an
        outage, after Redis restarted or lost writes."""
        self.jobs.clear()
        self.inbox.ensure_group()
        self._run_id = self._redis_run_id()
        self._seq = self.store.control.seq()
        self.inbox.take_over(min_idle_ms=0)
        self._next_housekeeping = 0.0
        self._next_census = 0.0
        self._resync = False
        self._drain(pending=True)

    def _redis_run_id(self) -> str:
        return self.store.control.run_id()

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
        while True:
            try:
                entries = self.inbox.read(pending, None if self._more else block_ms)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self.inbox.ensure_group()
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
                self.inbox.acknowledge(writes, [entry_id for entry_id, _ in entries])
            if len(writes):
                # the round's duration travels in its own commit (fenced, once)
                self.store.control.commit(writes, self.fence, self._seq,
                                          time.monotonic() - round_started)
                self._seq += 1
            self.lock.alive()  # a round committed: a long backlog is progress
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
            try:
                stop = hosted.host.update(trial, epoch, metrics)
            except Exception as exc:  # noqa: BLE001 - one job's oracle, never the chief
                oracle_failed(hosted, f"taking an epoch of trial {trial}", exc)
                return
            if stop:
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
        state, error = msg.get("state"), msg.get("error")
        if state is None:  # a message from an older writer: read the record instead
            row = self.store.jobs.trial(hosted.id, trial)
            state, error = row.get("state"), row.get("error")
        if state not in (TrialState.COMPLETED, TrialState.FAILED, TrialState.CANCELLED):
            return
        # Its epochs came through this same stream, before its end: the oracle has them.
        try:
            hosted.host.end(trial, completed=state == TrialState.COMPLETED, message=error or None,
                            grown_space=msg.get("hyperparameters") or None,
                            final=_final_metrics(msg))
        except RuntimeError as exc:  # KerasTuner: too many consecutive failed trials
            hosted.failure = (f"{hosted.spec.search.max_consecutive_failed_trials} consecutive"
                              f" trials failed: {str(exc).splitlines()[-1][:300]}")
        except Exception as exc:  # noqa: BLE001 - one job's oracle, never the chief
            oracle_failed(hosted, f"ending trial {trial}", exc)
        fatal_ends_search(hosted, state, msg.get("fatal"), error or "")
        hosted.dirty = True
        hosted.touched.add(trial)

    def _stage_oracles(self, writes: Writes) -> None:
        """Add the changed oracles' state (and decisions such as a failed search) to the
        round's writes."""
        for hosted in self.jobs.values():
            if hosted.failure and not hosted.failure_saved:
                # Persisted with the oracle that decided it: a chief restarted during the
                # wind-down must not start creating trials for this job again.
                self.store.jobs.stage_failure(writes, hosted.id, hosted.failure)
                hosted.failure_saved = True
            if hosted.dirty and hosted.host is not None:
                # Only what changed: the oracle's state without its per-trial parts
                # (a size that does not grow with the trials) and the touched trials.
                self.store.jobs.stage_oracle(
                    writes, hosted.id, hosted.host.state_json(),
                    hosted.host.trials_json(hosted.touched) if hosted.touched else {})
                hosted.dirty = False
                hosted.touched.clear()

    # --- jobs -------------------------------------------------------------------------------

    def _job(self, job_id: str) -> HostedJob | None:
        """The hosted job ``job_id``, loaded from Redis on first use (None: not an
        active job that can be loaded)."""
        hosted = self.jobs.get(job_id)
        if hosted is None:
            hosted = load_job(self.store, job_id, self.fence)
            self.lock.alive()  # loading every job after a take-over is progress
            if hosted is not None:
                self.jobs[job_id] = hosted
        return hosted

    def _reap(self) -> None:
        reaped = self.store.queue.reap(self.fence, self._stall_ms, self._grace_ms)
        if reaped.retried or reaped.failed:
            log.warning("reaped %d expired lease(s): %d to retry, %d failed",
                        reaped.retried + reaped.failed, reaped.retried, reaped.failed)
        self.store.workers.prune(self.lease_s)

    def _top_up(self, writes: Writes) -> None:
        """Stage new trials into ``writes`` for the free slots, no more (``top_up``)."""
        self._more = False
        if not self._active:
            return
        jobs = [hosted for hosted in map(self._job, list(self._active)) if hosted is not None]
        self._more = top_up(self.store.queue, jobs, self._slots, writes)

    def _finish_jobs(self) -> None:
        self._finish_scheduled()
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
            if self._take_ends_from_records(hosted, trials):
                continue  # finalized next round, after this round's oracle is committed
            if not hosted.finalize_retry.due():
                continue
            self._finalize(hosted, JobState.CANCELLED if cancel else
                           JobState.FAILED if hosted.failure else JobState.COMPLETED)

    def _take_ends_from_records(self, hosted: HostedJob, trials: list[dict[str, str]]) -> bool:
        """The oracle takes from the records the ends of trials it still holds running
        (their messages landed after this round's read, or were lost; a late one is a
        no-op): finalized now, the job's persisted oracle, which ``tuner.oracle`` reads,
        would miss their scores. True when it took any (the job waits a round)."""
        assert hosted.host is not None
        took = False
        for row in trials:
            trial = row.get("trial", "")
            if trial and hosted.host.is_open(trial):
                self._trial_ended(hosted, trial, {
                    name: row[name] for name in (
                        "state", "error", "hyperparameters", "metrics", "best_epoch",
                        "fatal")
                    if isinstance(row.get(name), str)})
                took = took or not hosted.host.is_open(trial)
        return took

    def _finish_scheduled(self) -> None:
        """Finalize the jobs whose run another scheduler saw end, as the native ones."""
        for scheduler in self.schedulers:
            for job_id, end in scheduler.ended().items():
                hosted = self._job(job_id) if job_id in self._active else None
                if hosted is not None and hosted.finalize_retry.due():
                    self._finalize(hosted, end.state, end.error)

    def _finalize(self, hosted: HostedJob, state: str, failure: str | None = None) -> None:
        """Job ``hosted`` to its final ``state``: results, the exported model, the state
        (``engine.finalize``), retried on storage errors. ``failure`` is why a job ended
        failed, as its scheduler saw it; a native job's is its own (``hosted.failure``)."""
        self.store.jobs.set_state(hosted.id, JobState.FINALIZING, fence=self.fence)
        error = failure
        if error is None and state == JobState.FAILED and hosted.failure:
            error = hosted.failure
            trials = build_results(self.store.jobs, hosted.id)["trials"]
            error = f"{error} | errors: {summarize_errors(trials)}"
        resolve = file_resolver(self.store, hosted.id, self.artifacts, hosted.uploaded)
        self.lock.alive(defaults.CHIEF_FINALIZE_STUCK_S)
        try:
            results = finalize(self.store, hosted.id, hosted.spec, self.artifacts, state,
                               resolve=resolve, error=error, fence=self.fence)
            log.info("job %s %s", hosted.id, results["state"])
        except (LostLeadership, StaleState):
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


def _final_metrics(msg: dict[str, str]) -> tuple[dict[str, Any], str] | None:
    """A completed trial's ``(metrics, best epoch)`` as its end message carries them (the
    oracle checks the values), or None when absent or not a JSON object."""
    try:
        metrics = codec.loads_object(msg.get("metrics") or "", "trial metrics")
    except (StoreError, ValueError):
        return None
    return metrics, msg.get("best_epoch", "")
