"""Ray Tune hooks of a Ray job's run: its Redis records and when the run must stop.

Module-level classes (Tune pickles its callbacks and stopper with the experiment; in
Ray client mode they even run on the cluster), so each carries its Redis connection
settings, not a live connection, when pickled, and never the password: the process
that unpickles them takes it from its own environment (``store.portable.store_from_state``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from ray import tune

from tunecluster.ray.searcher import epoch_metrics
from tunecluster.ray.trainable import EPOCH, TRIAL
from tunecluster.states import TrialState
from tunecluster.store import Store
from tunecluster.store.portable import store_from_state, store_state
from tunecluster.store.ray_records import RAY_CHIEF, RAY_FAILURE, RAY_RUN, RayRecords, ray_worker

CHECK_EVERY_S = 0.5  # how often the stopper reads cancel / failure / ownership


def error_line(trial: Any) -> str:
    """One line about the trial's latest failure, from the error file Tune writes."""
    text = ""
    try:
        path = trial.error_file
        text = Path(path).read_text() if path and Path(path).is_file() else ""
    except Exception:  # noqa: BLE001 - the error text is best effort
        text = ""
    last = text.rsplit("Failure #", 1)[-1].splitlines()[1:] if text else []
    lines = [line.strip() for line in last if line.strip()]
    if not lines:
        return "the trial's Ray actor failed"
    detail = next((line.split("Worker exit detail:", 1)[1].split(". ")[0].strip()
                   for line in lines if "Worker exit detail:" in line), "")
    return (lines[0] + (f" ({detail})" if detail else ""))[:300]


class RecordsCallback(tune.Callback):
    """Mirrors trial starts, epochs, retries and failures into the job's Redis records
    (trial ends are the searcher's: it ends them in the oracle at the same time)."""

    def __init__(self, store: Store, job: str) -> None:
        self.records = RayRecords(store)
        self.job = job

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.records.start(self.job, trial.config[TRIAL], ray_worker(trial.trial_id))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        metrics = epoch_metrics(result)
        if metrics is None or EPOCH not in result:
            return
        tc, worker = trial.config[TRIAL], ray_worker(trial.trial_id)
        if self.records.epoch(self.job, tc, worker, int(result[EPOCH]), metrics) is None:
            # not RUNNING under this Ray trial: a restart Tune did not announce
            if self.records.start(self.job, tc, worker) is not None:
                self.records.epoch(self.job, tc, worker, int(result[EPOCH]), metrics)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.records.retry(self.job, trial.config[TRIAL], ray_worker(trial.trial_id),
                           f"Ray actor lost: {error_line(trial)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tc, message = trial.config[TRIAL], f"Ray: {error_line(trial)}"
        if not self.records.finish(self.job, tc, ray_worker(trial.trial_id), TrialState.FAILED,
                                   {"error": message}):
            self.records.close(self.job, tc, TrialState.FAILED, message)

    def __getstate__(self) -> dict[str, Any]:
        return {"store": store_state(self.records.store), "job": self.job}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.records = RayRecords(store_from_state(state["store"]))
        self.job = state["job"]


class JobStopper(tune.Stopper):
    """Stops a trial whose ``stop`` flag the oracle set; stops the whole run on cancel, a
    failed search, this runner stopping, another chief (or run) taking the job over, or
    another chief holding the chief lock (this one was deposed)."""

    def __init__(self, store: Store, job: str, chief: str, run: int,
                 local_stop: threading.Event | None = None) -> None:
        self.store, self.job, self.chief, self.run = store, job, chief, run
        self.local_stop = local_stop
        self._checked, self._all = 0.0, False

    def __call__(self, trial_id: str, result: dict) -> bool:
        trial = (result.get("config") or {}).get(TRIAL)
        return bool(trial) and self.store.jobs.trial_field(self.job, trial, "stop") == "1"

    def stop_all(self) -> bool:
        if self._all or (self.local_stop is not None and self.local_stop.is_set()):
            return True
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:
            return False
        self._checked = now
        cancel, failure, owner, run = self.store.jobs.fields(
            self.job, ["cancel", RAY_FAILURE, RAY_CHIEF, RAY_RUN])
        lock = self.store.chief()
        # another chief holds the lock: this one was deposed (its own loop may be stalled)
        deposed = lock is not None and lock != self.chief
        self._all = (cancel == "1" or bool(failure) or owner != self.chief
                     or str(run) != str(self.run) or deposed)
        return self._all

    def __getstate__(self) -> dict[str, Any]:
        return {"store": store_state(self.store), "job": self.job, "chief": self.chief,
                "run": self.run}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.store = store_from_state(state["store"])
        self.job, self.chief, self.run = state["job"], state["chief"], state["run"]
        self.local_stop, self._checked, self._all = None, 0.0, False
