"""One real KerasTuner oracle per job, persisted to Redis as JSON instead of to files.

The oracles are KerasTuner's own classes (random, grid, Bayesian, Hyperband); the only
change is where they persist: ``save``/``_save_trial`` are no-ops and the chief stores
``state_json()`` in Redis in the same transaction as the trials it creates.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping
from typing import Any

from tunecluster.spec.models import JobSpec


class _PersistedInRedis:
    def save(self) -> None:  # the chief persists the whole state itself
        pass

    def _save_trial(self, trial: Any) -> None:
        pass


def _oracle_class(algorithm: str) -> type:
    from keras_tuner import oracles

    base = {
        "random": oracles.RandomSearchOracle,
        "grid": oracles.GridSearchOracle,
        "bayesian": oracles.BayesianOptimizationOracle,
        "hyperband": oracles.HyperbandOracle,
    }[algorithm]
    return type(f"Hosted{base.__name__}", (_PersistedInRedis, base), {})


class OracleHost:
    """The chief's handle on one job's oracle."""

    def __init__(self, spec: JobSpec, space: Mapping[str, Any], oracle: Any) -> None:
        self.spec = spec
        self.space = dict(space)
        self.oracle = oracle

    @classmethod
    def create(cls, spec: JobSpec, space: Mapping[str, Any], state_json: str | None = None,
               trial_states: Mapping[str, str] | None = None,
               warm_trials: Mapping[str, str] | None = None) -> OracleHost:
        """The job's oracle: new, or restored from its persisted state. ``warm_trials``
        (a new job's ``warm_start`` source's persisted trials) seed a new oracle."""
        import keras_tuner as kt

        search = spec.search
        common: dict[str, Any] = {
            "objective": kt.Objective(search.objective_name, search.direction),
            "hyperparameters": kt.HyperParameters.from_config(dict(space)),
            "seed": search.seed,
            # Retries are the queue's business (leases); the oracle sees final outcomes.
            "max_retries_per_trial": 0,
            "max_consecutive_failed_trials": search.max_consecutive_failed_trials,
        }
        cls_ = _oracle_class(search.algorithm)
        if search.algorithm == "hyperband":
            oracle = cls_(max_epochs=spec.train.epochs, factor=search.hyperband_factor, **common)
            oracle.max_trials = search.max_trials
        elif search.algorithm == "bayesian":
            oracle = cls_(max_trials=search.max_trials,
                          num_initial_points=min(search.num_initial_points, search.max_trials),
                          **common)
        else:
            oracle = cls_(max_trials=search.max_trials, **common)
        oracle.verbose = 0
        if state_json:
            oracle.trials = {tid: kt.engine.trial.Trial.from_state(json.loads(s))
                             for tid, s in (trial_states or {}).items()}
            oracle.set_state(json.loads(state_json))
        elif warm_trials:
            seed_oracle(oracle, warm_trials)
        host = cls(spec, space, oracle)
        # Seeded trials are the oracle's but not the job's: max_trials counts new ones.
        if oracle.max_trials:
            oracle.max_trials = search.max_trials + len(host.seeded)
        return host

    @property
    def seeded(self) -> list[str]:
        """Ids of the trials carried over by ``warm_start`` (``w`` + the source's id)."""
        return [tid for tid in self.oracle.trials if tid.startswith(WARM_PREFIX)]

    def state_json(self) -> str:
        """The oracle's own state; each trial's is kept apart (``trial_json``) so that a
        change costs one trial's serialization, not the whole history's."""
        return json.dumps(self.oracle.get_state(), default=_jsonable)

    def trial_json(self, trial_id: str) -> str:
        return json.dumps(self.oracle.trials[trial_id].get_state(), default=_jsonable)

    def create_trial(self) -> tuple[str, str | None, dict[str, Any]]:
        """Ask for the next trial: (status, trial_id, values). Status RUNNING/IDLE/STOPPED.

        Each call asks under a tuner id never used before, by this chief or an earlier
        one: KerasTuner answers a known tuner id with that tuner's ongoing trial, so a
        reused id would hand out (and re-queue) a trial that is already running. A
        counter restarted from the trial count does reuse ids, since IDLE answers use
        ids too and are not persisted."""
        tuner_id = f"c-{secrets.token_hex(8)}"
        trial = self.oracle.create_trial(tuner_id)
        if trial.status != "RUNNING":
            self.oracle.tuner_ids.discard(tuner_id)  # IDLE leaves it behind: keep it bounded
            return trial.status, None, {}
        return "RUNNING", trial.trial_id, dict(trial.hyperparameters.values)

    @property
    def trial_count(self) -> int:
        return len(self.oracle.trials)

    def knows(self, trial_id: str) -> bool:
        return trial_id in self.oracle.trials

    def is_open(self, trial_id: str) -> bool:
        trial = self.oracle.trials.get(trial_id)
        return trial is not None and trial.status == "RUNNING"

    def update(self, trial_id: str, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Feed one epoch (once); True when the oracle wants the trial stopped."""
        trial = self.oracle.trials.get(trial_id)
        if trial is None or trial.status != "RUNNING":
            return False
        objective = self.spec.search.objective_name
        if objective not in metrics:
            return False  # the worker fails such a trial with a clear error
        if trial.metrics.exists(objective) and any(
            obs.step == epoch for obs in trial.metrics.get_history(objective)
        ):
            return False
        clean = {k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if objective not in clean:
            return False
        result = self.oracle.update_trial(trial_id, clean, step=epoch)
        return getattr(result, "status", "RUNNING") == "STOPPED"

    def end(self, trial_id: str, completed: bool, message: str | None = None) -> None:
        """Tell the oracle a trial ended. Raises RuntimeError past the failure budget."""
        trial = self.oracle.trials.get(trial_id)
        if trial is None or trial.status != "RUNNING":
            return
        trial.status = "COMPLETED" if completed else "FAILED"
        trial.message = message
        self.oracle.end_trial(trial)

    def ongoing(self) -> int:
        return len(self.oracle.ongoing_trials)


WARM_PREFIX = "w"  # native trial ids are digits: a seeded trial's id cannot collide


def seed_oracle(oracle: Any, trial_states: Mapping[str, str]) -> list[str]:
    """Add a finished job's completed trials to a new oracle, as completed trials with
    their score, where they fit its space (the rule of ``spec.models.WarmStart``);
    returns the ids added. Bayesian optimization counts them among its initial points
    and fits its Gaussian process on them; every oracle skips their values."""
    from keras_tuner.engine.trial import Trial, TrialStatus

    added = []
    for tid, raw in sorted(trial_states.items()):
        old = Trial.from_state(json.loads(raw))
        if old.status != TrialStatus.COMPLETED or old.score is None:
            continue
        values = carried_values(oracle.hyperparameters, old.hyperparameters.values)
        if values is None:
            continue
        hp = oracle.hyperparameters.copy()
        hp.values = values
        trial = Trial(hp, trial_id=f"{WARM_PREFIX}{tid}", status=TrialStatus.COMPLETED)
        trial.score, trial.best_step, trial.metrics = old.score, old.best_step, old.metrics
        oracle.trials[trial.trial_id] = trial
        oracle.start_order.append(trial.trial_id)
        oracle.end_order.append(trial.trial_id)
        oracle._record_values(trial)
        added.append(trial.trial_id)
    return added


def carried_values(space: Any, values: Mapping[str, Any]) -> dict[str, Any] | None:
    """``values`` completed with ``space``'s defaults, or None when one of them names no
    hyperparameter of ``space`` or lies outside it."""
    known = {p.name: p for p in space.space}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name.startswith("tuner/"):
            continue
        param = known.get(name)
        if param is None or not _within(param, value):
            return None
        out[name] = value
    for name, param in known.items():
        out.setdefault(name, param.default)
    return out


def _within(param: Any, value: Any) -> bool:
    kind = type(param).__name__
    if kind == "Choice":
        return value in param.values
    if kind == "Fixed":
        return bool(value == param.value)
    if kind == "Boolean":
        return isinstance(value, bool)
    if kind in ("Int", "Float"):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "Int" and number and value != int(value):
            return False
        return number and param.min_value <= value <= param.max_value
    return False


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
