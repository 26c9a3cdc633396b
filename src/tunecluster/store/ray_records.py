"""Trial records of jobs that Ray Tune drives (``scheduler: ray``).

Ray decides where and when trials run; Redis still holds the same trial records,
epochs and events as for native jobs, so ``status``, ``watch``, ``results`` and
``best`` read them unchanged. The differences from the native queue:

- a Ray trial is never in the ``ready`` list nor in ``leases``: native workers cannot
  claim it and the chief's reaper never touches it (Ray owns liveness and retries);
- its owner (the record's ``worker``) is ``ray:<Ray trial id>``; Ray trial ids are
  unique per Ray run, so writes from a superseded run are refused by the same
  ownership checks (``TrialQueue.report_epoch`` / ``finish``) that guard native trials.

Everything here is plain MULTI/EXEC (with WATCH where a check precedes the write); the
epoch reports and the final write reuse ``TrialQueue``'s atomic scripts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from tunecluster.states import TrialState
from tunecluster.store import Store, codec
from tunecluster.store.fence import Fence, Writes
from tunecluster.store.queue import EVENTS_MAXLEN, Claim, LostLease, now_ms

WORKER_PREFIX = "ray:"
FINAL = (TrialState.COMPLETED, TrialState.FAILED, TrialState.CANCELLED)

# Fields of the job hash written for Ray jobs (the job record is otherwise unchanged).
RAY_CHIEF = "ray_chief"  # id of the chief whose Ray run drives the job now
RAY_RUN = "ray_run"  # how many Ray runs the job has had (a chief restart starts another)
RAY_FAILURE = "ray_failure"  # why the search must end failed (set before stopping Ray)


def ray_worker(ray_trial_id: str) -> str:
    return f"{WORKER_PREFIX}{ray_trial_id}"


class RayRecords:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.r = store.client
        self.k = store.keys

    # --- trials ------------------------------------------------------------------------

    def create(self, job: str, trial: str, values: Mapping[str, Any], max_retries: int,
               oracle_state: str, oracle_trial: str) -> None:
        """Record a new trial READY with the oracle that made it (one transaction)."""
        now = now_ms()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.k.trial(job, trial), mapping={
            "job": job, "trial": trial, "state": TrialState.READY,
            "values": codec.dumps(dict(values)),
            "attempts": 0, "max_retries": max_retries, "worker": "", "created": now,
            "scheduler": "ray",
        })
        pipe.zadd(self.k.trials(job), {trial: now})
        pipe.set(self.k.oracle(job), oracle_state)
        pipe.hset(self.k.oracle_trials(job), trial, oracle_trial)
        self._event(pipe, job, "trial_created", {"trial": trial, "values": dict(values)})
        pipe.execute()

    def start(self, job: str, trial: str, worker: str) -> Claim | None:
        """READY -> RUNNING owned by ``worker``, counting an attempt (like a claim).

        Already RUNNING under ``worker``: returns its current claim. Otherwise None.
        """
        key = self.k.trial(job, trial)
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                row = pipe.hgetall(key)
                if row.get("state") == TrialState.RUNNING and row.get("worker") == worker:
                    return self._claim(job, trial, row)
                if row.get("state") != TrialState.READY:
                    return None
                attempt = int(row.get("attempts") or 0) + 1
                pipe.multi()
                pipe.hset(key, mapping={"state": TrialState.RUNNING, "worker": worker,
                                        "attempts": attempt, "started": now_ms()})
                self._event(pipe, job, "trial_started",
                            {"trial": trial, "worker": worker, "attempt": attempt})
                pipe.execute()
                return Claim(job, trial, attempt, codec.loads_object(row.get("values", "{}"),
                                                                     "trial values"))
            except redis.WatchError:
                return None

    def claim_of(self, job: str, trial: str, worker: str) -> Claim | None:
        row = self.r.hgetall(self.k.trial(job, trial))
        if row.get("state") != TrialState.RUNNING or row.get("worker") != worker:
            return None
        return self._claim(job, trial, row)

    def epoch(self, job: str, trial: str, worker: str, epoch: int,
              metrics: Mapping[str, float]) -> int | None:
        """Record one epoch through the queue's script; None if ``worker`` does not own it."""
        claim = self.claim_of(job, trial, worker)
        if claim is None:
            return None
        try:
            return self.store.queue.report_epoch(claim, worker, epoch, metrics)
        except LostLease:
            return None

    def finish(self, job: str, trial: str, worker: str, state: str,
               fields: Mapping[str, Any]) -> bool:
        """RUNNING -> final through the queue's script; False if ``worker`` does not own it."""
        claim = self.claim_of(job, trial, worker)
        return claim is not None and self.store.queue.finish(claim, worker, state, fields)

    def retry(self, job: str, trial: str, worker: str, reason: str) -> bool:
        """RUNNING -> READY: Ray will run the trial again (its actor died)."""
        key = self.k.trial(job, trial)
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                row = pipe.hgetall(key)
                if row.get("state") != TrialState.RUNNING or row.get("worker") != worker:
                    return False
                pipe.multi()
                pipe.hset(key, mapping={"state": TrialState.READY, "worker": "",
                                        "last_error": reason})
                pipe.rpush(f"{key}:errors", reason)
                self._event(pipe, job, "trial_retry", {
                    "trial": trial, "worker": worker, "attempt": int(row.get("attempts") or 0),
                    "reason": reason})
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def close(self, job: str, trial: str, state: str, reason: str,
              fields: Mapping[str, Any] | None = None) -> bool:
        """READY or RUNNING -> ``state`` whoever owns it (the end of a Ray run)."""
        key = self.k.trial(job, trial)
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                row = pipe.hgetall(key)
                if row.get("state") not in (TrialState.READY, TrialState.RUNNING):
                    return False
                mapping = {k: v if isinstance(v, str) else codec.dumps(v)
                           for k, v in (fields or {}).items()}
                mapping.update(state=state, finished=str(now_ms()))
                if state != TrialState.COMPLETED:
                    mapping["error"] = reason
                pipe.multi()
                pipe.hset(key, mapping=mapping)
                self._event(pipe, job, f"trial_{state.lower()}", {
                    "trial": trial, "worker": row.get("worker") or None,
                    "attempt": int(row.get("attempts") or 0),
                    "score": mapping.get("score"), "error": mapping.get("error")})
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def stopped_early(self, job: str, trial: str, epoch: int, by: str) -> None:
        self._event(self.r, job, "trial_stopped_early", {"trial": trial, "epoch": epoch, "by": by})

    def open_trials(self, job: str) -> list[dict[str, str]]:
        return [row for row in self.store.jobs.trials(job) if row.get("state") not in FINAL]

    def persist_oracle(self, job: str, state_json: str,
                       trials: Mapping[str, str] | None = None) -> None:
        """The oracle's own state and the states of the trials it changed (as the chief)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.k.oracle(job), state_json)
        if trials:
            pipe.hset(self.k.oracle_trials(job), mapping=dict(trials))
        pipe.execute()

    # --- the job ----------------------------------------------------------------------------

    def take_over(self, job: str, chief: str, address: str = "",
                  fence: Fence = Fence.NONE) -> int:
        """Make ``chief`` the driver of the job's next Ray run; returns the run number.
        Under ``fence`` (the chief's): a deposed chief takes nothing over."""
        run = int(self.r.hget(self.k.job(job), RAY_RUN) or 0) + 1
        writes = Writes().hset(self.k.job(job), mapping={RAY_CHIEF: chief, RAY_RUN: run})
        writes.xadd(self.k.events(job), {"type": "ray_run_started", "data": codec.dumps(
            {"run": run, "chief": chief, "address": address or "local"})},
            maxlen=EVENTS_MAXLEN, approximate=True)
        writes.apply(self.r, fence)
        return run

    def owner(self, job: str) -> str | None:
        return self.r.hget(self.k.job(job), RAY_CHIEF)

    def fail(self, job: str, reason: str) -> None:
        self.r.hset(self.k.job(job), RAY_FAILURE, reason)

    def failure(self, job: str) -> str | None:
        return self.r.hget(self.k.job(job), RAY_FAILURE) or None

    def cancelled(self, job: str) -> bool:
        return self.r.hget(self.k.job(job), "cancel") == "1"

    def stop_requested(self, job: str, trial: str) -> bool:
        return self.r.hget(self.k.trial(job, trial), "stop") == "1"

    # --- helpers ----------------------------------------------------------------------------

    def _claim(self, job: str, trial: str, row: Mapping[str, str]) -> Claim:
        try:
            values = codec.loads_object(row.get("values", "{}"), "trial values")
        except Exception:  # noqa: BLE001 - ownership does not depend on the values
            values = {}
        return Claim(job, trial, int(row.get("attempts") or 0), values)

    def _event(self, pipe: Any, job: str, kind: str, data: Mapping[str, Any]) -> None:
        pipe.xadd(self.k.events(job), {"type": kind, "data": codec.dumps(dict(data))},
                  maxlen=EVENTS_MAXLEN, approximate=True)
