"""A hosted oracle's state brought back: KerasTuner's whole state rebuilt from what
``OracleHost`` persisted (``state_json`` and each trial's record), and a new oracle
seeded with a finished job's trials (``warm_start``).

Data only: JSON and KerasTuner's trial and hyperparameter configs, never code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# The key, in a trial's persisted record, of the oracle's bookkeeping about that trial;
# and the mark of a state_json() that leaves that bookkeeping to the trials.
BOOK = "tunecluster"


def restore_state(oracle: Any, state_json: str, trial_states: Mapping[str, str]) -> None:
    """Give ``oracle`` (a KerasTuner oracle of the job's class) the state ``state_json()``
    and ``trials_json()`` persisted: its trials and KerasTuner's own state. Data only
    (JSON and KerasTuner's trial and hyperparameter configs); raises ValueError,
    KeyError or TypeError on a record that does not parse."""
    from keras_tuner.engine.trial import Trial

    records = {tid: json.loads(s) for tid, s in trial_states.items()}
    oracle.trials = {tid: Trial.from_state(r) for tid, r in records.items()}
    oracle.set_state(_whole_state(json.loads(state_json), records))
    if hasattr(oracle, "_ordered_ids"):  # KerasTuner's GridSearchOracle
        _restore_grid_order(oracle)


def _restore_grid_order(oracle: Any) -> None:
    """KerasTuner's grid keeps two things in memory only, not in its state: its trials
    in grid order (a linked list) and the trials whose next combination it has still to
    try. Restored without them (a chief restarted, took over, or reloaded after Redis
    restarted), its next suggestion failed with a KeyError. Rebuilt from the trials:
    every trial in grid order, each queued for its next combination (KerasTuner skips a
    trial whose next combination is already taken)."""
    from functools import cmp_to_key

    def grid_order(a: Any, b: Any) -> int:
        return int(oracle._compare(a.hyperparameters.values, b.hyperparameters.values))

    trials = sorted(oracle.trials.values(), key=cmp_to_key(grid_order))
    order = type(oracle._ordered_ids)()  # KerasTuner's LinkedList
    for trial in trials:
        order.insert(trial.trial_id)
    oracle._ordered_ids = order
    oracle._populate_next = [trial.trial_id for trial in trials]


def _whole_state(state: dict[str, Any], records: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """KerasTuner's whole oracle state from ``state_json()`` and the trials' records
    (a state persisted whole, by an older version, is returned as it is)."""
    if not state.pop(BOOK, None):
        return state
    books = {tid: r.get(BOOK) or {} for tid, r in records.items()}

    def ordered(field: str) -> list[str]:
        placed = [(b[field], tid) for tid, b in books.items() if b.get(field) is not None]
        return [tid for _pos, tid in sorted(placed)]

    hashes = {tid: b["hash"] for tid, b in books.items() if b.get("hash")}
    return {**state,
            "ongoing_trials": {b["tuner"]: tid for tid, b in books.items() if b.get("tuner")},
            "start_order": ordered("start"), "end_order": ordered("end"),
            "run_times": {tid: b["runs"] for tid, b in books.items() if b.get("runs")},
            "tried_so_far": sorted(set(hashes.values())), "id_to_hash": hashes}


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
