"""The job's KerasTuner oracle as a Ray Tune ``Searcher``.

The oracle is the chief's own ``OracleHost`` (random, grid, Bayesian, Hyperband), so
the algorithms mean on Ray exactly what they mean natively:

- ``suggest``: ``create_trial`` -> RUNNING: the trial's config (and a READY record in
  Redis, persisted with the oracle's state in one transaction); IDLE: ``None`` (Tune
  asks again later); STOPPED: ``Searcher.FINISHED``.
- ``on_trial_result``: ``update`` (an oracle that asks to stop a trial sets the trial's
  ``stop`` flag, which ``JobStopper`` obeys at the next result).
- ``on_trial_complete``: the trial's final record (COMPLETED / FAILED; a trial stopped
  by Ray's scheduler ends COMPLETED with the epochs it ran, marked ``stopped_early``),
  then ``end`` in the oracle, whose state is persisted to Redis.

Trials that a previous Ray run of the job left unfinished (a chief restart) are handed
out first, with their own trial ids and values, so they resume from their checkpoints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from ray.tune.search import Searcher

from tunecluster.engine.oracle_host import OracleHost
from tunecluster.ray.trainable import (
    EPOCH,
    ERROR,
    FINAL,
    METRICS,
    RESULT,
    TRACEBACK,
    TRIAL,
    VALUES,
)
from tunecluster.spec.models import JobSpec
from tunecluster.states import OracleStatus, TrialState
from tunecluster.store import Store, codec
from tunecluster.store.portable import store_from_state, store_state
from tunecluster.store.ray_records import RayRecords, ray_worker


def oracle_snapshot(host: OracleHost) -> tuple[str, dict[str, str]]:
    """What ``OracleHost.create`` takes back: the oracle's state and each trial's."""
    return host.state_json(), {tid: host.trial_json(tid) for tid in host.oracle.trials}


def epoch_metrics(result: dict[str, Any]) -> dict[str, float] | None:
    """The Keras metrics of an epoch result (None for other results)."""
    text = result.get(METRICS)
    if not isinstance(text, str) or FINAL in result:
        return None
    try:
        return {k: float(v) for k, v in json.loads(text).items()}
    except (ValueError, TypeError, AttributeError):
        return None


def best_epoch(epochs: dict[int, dict[str, float]], objective: str,
               direction: str) -> tuple[int, dict[str, float]] | None:
    """The best epoch as run_trial judges it (ties: the earliest)."""
    rows = [(e, m) for e, m in sorted(epochs.items())
            if isinstance(m.get(objective), (int, float)) and math.isfinite(m[objective])]
    if not rows:
        return None
    pick = max if direction == "max" else min
    return pick(rows, key=lambda row: row[1][objective])


class OracleSearcher(Searcher):
    def __init__(self, store: Store, job: str, spec: JobSpec, space: dict[str, Any],
                 host: OracleHost, resume: Iterable[tuple[str, dict[str, Any]]] = (),
                 scheduler_name: str = "ray") -> None:
        super().__init__(metric=spec.search.objective_name, mode=spec.search.direction)
        self.records = RayRecords(store)
        self.job, self.spec, self.space, self.host = job, spec, dict(space), host
        self.scheduler_name = scheduler_name
        self.resume = list(resume)
        self.trials: dict[str, str] = {}  # Ray trial id -> tunecluster trial id
        self.exhausted = False

    # --- Searcher ---------------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # the objective comes from the job spec

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.exhausted:
            return Searcher.FINISHED
        if self.records.cancelled(self.job) or self.records.failure(self.job):
            self.exhausted = True
            return Searcher.FINISHED
        if self.resume:
            trial, values = self.resume.pop(0)
            return self._config(trial_id, trial, values)
        status, trial, values = self.host.create_trial()
        if status == TrialState.RUNNING and trial is not None:
            self.records.create(self.job, trial, values, self.spec.search.max_retries_per_trial,
                                self.host.state_json(), self.host.trial_json(trial))
            return self._config(trial_id, trial, values)
        if status == OracleStatus.IDLE:
            return None
        self.exhausted = True
        self.records.persist_oracle(self.job, self.host.state_json())
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = self.trials.get(trial_id)
        metrics = epoch_metrics(result)
        if trial is None or metrics is None or EPOCH not in result:
            return
        if self.host.update(trial, int(result[EPOCH]), metrics):
            self.records.store.queue.request_stop(self.job, trial)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        trial = self.trials.pop(trial_id, None)
        if trial is None:
            return
        worker = ray_worker(trial_id)
        if error:
            # Ray gave up on the trial (its actor died more than max_failures times); the
            # record is written by RecordsCallback.on_trial_error, which knows the error.
            self._end(trial, completed=False, message="its Ray actor failed")
        elif result is not None and FINAL in result:
            if result.get(ERROR):
                self.records.finish(self.job, trial, worker, TrialState.FAILED, {
                    "error": str(result[ERROR]), "traceback": str(result.get(TRACEBACK, ""))})
                self._end(trial, completed=False, message=str(result[ERROR]))
            else:
                outcome = json.loads(result.get(RESULT) or "{}")
                self.records.finish(self.job, trial, worker, TrialState.COMPLETED, {
                    "score": repr(float(outcome["score"])),
                    "metrics": outcome.get("metrics", {}),
                    "best_epoch": str(outcome.get("best_epoch", "")),
                    "resumed_from_epoch": str(outcome.get("resumed_from_epoch", 0)),
                    "result": outcome,
                })
                self._end(trial, completed=True,
                          final=(outcome.get("metrics") or {}, outcome.get("best_epoch")))
        elif result is not None:
            self._stopped(trial, worker)
        else:  # removed before it ran (the run is ending)
            self.records.close(self.job, trial, TrialState.CANCELLED, "stopped before it started")
            self._end(trial, completed=False, message="stopped before it started")

    def save(self, checkpoint_path: str) -> None:
        pass  # the oracle's state lives in Redis (persisted at every create and end)

    def restore(self, checkpoint_path: str) -> None:
        pass

    # --- helpers -----------------------------------------------------------------------------

    def _config(self, ray_trial: str, trial: str, values: dict[str, Any]) -> dict[str, Any]:
        self.trials[ray_trial] = trial
        return {TRIAL: trial, VALUES: codec.dumps(values)}

    def _stopped(self, trial: str, worker: str) -> None:
        """Tune stopped the trial after an epoch (ASHA / median / the oracle): COMPLETED
        with the epochs it ran; it keeps its best epoch's weights as any trial does."""
        search = self.spec.search
        epochs = self.records.store.jobs.epochs(self.job, trial)
        best = best_epoch(epochs, search.objective_name, search.direction)
        if best is None:
            self.records.finish(self.job, trial, worker, TrialState.CANCELLED,
                                {"error": "stopped before its first epoch"})
            self._end(trial, completed=False, message="stopped before its first epoch")
            return
        last = max(epochs)
        values = codec.loads_object(self.records.store.jobs.trial(self.job, trial)
                                    .get("values", "{}"), "trial values")
        planned = int(values.get("tuner/epochs", self.spec.train.epochs))
        by = "oracle" if self.records.stop_requested(self.job, trial) else self.scheduler_name
        early = last < planned
        number, metrics = best
        fields: dict[str, Any] = {
            "score": repr(float(metrics[search.objective_name])),
            "metrics": metrics,
            "best_epoch": str(number),
            "resumed_from_epoch": "0",
            "result": {"trial_id": trial, "best_epoch": number, "metrics": metrics,
                       "score": metrics[search.objective_name], "stopped_early": early,
                       "stopped_by": by if early else None, "epochs_run": last},
        }
        if early:
            fields.update(stopped_early="1", stopped_by=by)
        if self.records.finish(self.job, trial, worker, TrialState.COMPLETED, fields) and early:
            self.records.stopped_early(self.job, trial, last, by)
        self._end(trial, completed=True)

    def _end(self, trial: str, completed: bool, message: str | None = None,
             final: tuple[dict[str, Any], Any] | None = None) -> None:
        # Epochs reach the oracle through on_trial_result; feed any it missed (the
        # result Tune stopped a trial on, a resumed trial's earlier epochs).
        for epoch, metrics in self.records.store.jobs.epochs(self.job, trial).items():
            self.host.update(trial, epoch, metrics)
        try:
            self.host.end(trial, completed=completed, message=message, final=final)
        except RuntimeError as exc:  # KerasTuner: too many consecutive failed trials
            self.records.fail(self.job, (
                f"{self.spec.search.max_consecutive_failed_trials} consecutive trials"
                f" failed: {str(exc).splitlines()[-1][:300]}"))
        self.records.persist_oracle(self.job, self.host.state_json(),
                                    {trial: self.host.trial_json(trial)})

    # --- pickling (Ray client mode runs Tune's driver on the cluster) ------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["records"] = store_state(self.records.store)
        state["host"] = oracle_snapshot(self.host)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["records"] = RayRecords(store_from_state(state["records"]))
        state["host"] = OracleHost.create(state["spec"], state["space"], *state["host"])
        self.__dict__.update(state)
