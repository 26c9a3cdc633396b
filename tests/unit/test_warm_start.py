"""Warm start: the spec, the submit-time checks and the seeded oracle (real Redis where
it matters); the chief's part runs through real processes in tests/e2e/test_warm_start.py."""

from __future__ import annotations

import pytest

from tunecluster.api import Client
from tunecluster.engine.oracle_host import OracleHost
from tunecluster.engine.oracle_state import carried_values
from tunecluster.errors import SpecError
from tunecluster.spec import parse_spec

SPEC = {"name": "resumable", "data": {"dataset": "digits"},
        "model": {"builtin": "mlp", "hyperparameters": {
            "n_hidden": {"int": [1, 3]}, "learning_rate": {"float": [1e-3, 1e-1]}}},
        "search": {"objective": "val_accuracy", "max_trials": 2}}


def _finished(client: Client, spec: dict = SPEC, files: dict | None = None,
              trials: int = 2, state: str = "completed"):
    job = client.submit(parse_spec(spec) if files else spec, files=files)
    store = client.store
    store.client.zadd(store.keys.trials(job.id), {str(i): i for i in range(trials)})
    if state in ("completed", "failed", "cancelled"):
        store.jobs.set_state(job.id, "finalizing")  # a job ends through finalize
    store.jobs.set_state(job.id, state, error="x" if state == "failed" else "")
    return job


# --- warm start: spec and submit ---------------------------------------------------------


def test_warm_start_in_the_spec() -> None:
    spec = parse_spec({**SPEC, "warm_start": {"from": "resumable-abc"}})
    assert spec.warm_start is not None and spec.warm_start.from_ == "resumable-abc"
    with pytest.raises(SpecError, match=r"^warm_start.from: .*not a job id"):
        parse_spec({**SPEC, "warm_start": {"from": "Not A Job!"}})
    with pytest.raises(SpecError, match="warm_start"):
        parse_spec({**SPEC, "warm_start": {"job": "x"}})
    hyperband = {**SPEC, "search": {**SPEC["search"], "algorithm": "hyperband"},
                 "train": {"epochs": 3}, "warm_start": {"from": "a"}}
    with pytest.raises(SpecError, match="seeds random and bayesian searches"):
        parse_spec(hyperband)


def test_warm_start_source_must_exist_be_final_and_share_the_objective(
        client: Client) -> None:
    def warm(source: str, objective: str = "val_accuracy") -> dict:
        return {**SPEC, "search": {**SPEC["search"], "objective": objective},
                "warm_start": {"from": source}}

    with pytest.raises(SpecError, match="^warm_start.from: no job 'nope-1'"):
        client.submit(warm("nope-1"))
    running = client.submit(SPEC)
    with pytest.raises(SpecError, match="is queued; warm start reads a finished job"):
        client.submit(warm(running.id))
    done = _finished(client)
    with pytest.raises(SpecError, match=r"optimized val_accuracy \(max\), this job val_loss"):
        client.submit(warm(done.id, "val_loss"))
    assert client.submit(warm(done.id)).record().spec["warm_start"] == {"from": done.id}


# --- warm start: the seeded oracle ----------------------------------------------------------


def _source_trials(n: int = 3) -> dict[str, str]:
    """A finished random search's persisted trials (n completed, one failed)."""
    spec = parse_spec({**SPEC, "search": {**SPEC["search"], "max_trials": n + 1, "seed": 1}})
    host = OracleHost.create(spec, _space(spec))
    for i in range(n + 1):
        _status, trial, _values = host.create_trial()
        assert trial is not None
        host.update(trial, 0, {"val_accuracy": 0.1 * (i + 1)})
        host.end(trial, completed=i < n)
    return {tid: host.trial_json(tid) for tid in host.oracle.trials}


def _space(spec) -> dict:
    from tunecluster.api.submission import search_space

    return search_space(spec)


def test_a_seeded_bayesian_oracle_fits_its_first_suggestion_on_the_old_trials(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from keras_tuner.src.tuners.bayesian import BayesianOptimizationOracle

    old = _source_trials(3)
    spec = parse_spec({**SPEC, "search": {"algorithm": "bayesian", "objective": "val_accuracy",
                                          "max_trials": 2, "num_initial_points": 3},
                       "warm_start": {"from": "resumable-abc"}})
    host = OracleHost.create(spec, _space(spec), warm_trials=old)
    assert host.seeded == ["w0", "w1", "w2"]  # the failed trial is left out
    assert [host.oracle.trials[t].score for t in host.seeded] == pytest.approx([0.1, 0.2, 0.3])
    assert host.oracle.max_trials == 2 + 3  # max_trials counts the new trials

    def no_random(self):  # the first suggestion must come from the Gaussian process
        raise AssertionError("random initial point: the seeded trials were not used")

    monkeypatch.setattr(BayesianOptimizationOracle, "_random_populate_space", no_random)
    status, trial, values = host.create_trial()
    assert status == "RUNNING" and trial == "3" and set(values) == {"n_hidden",
                                                                    "learning_rate"}
    # persisted and reloaded (a chief restart): the seeded trials and the budget stay
    again = OracleHost.create(spec, _space(spec), host.state_json(),
                              {t: host.trial_json(t) for t in host.oracle.trials})
    assert again.seeded == host.seeded and again.oracle.max_trials == 5


def test_an_unseeded_bayesian_oracle_starts_with_random_points() -> None:
    spec = parse_spec({**SPEC, "search": {"algorithm": "bayesian", "objective": "val_accuracy",
                                          "max_trials": 2, "num_initial_points": 3}})
    host = OracleHost.create(spec, _space(spec))
    assert host.seeded == [] and host.oracle.max_trials == 2
    assert len([t for t in host.oracle.trials.values() if t.status == "COMPLETED"]) == 0


def test_the_overlap_rule() -> None:
    import keras_tuner as kt

    space = kt.HyperParameters()
    space.Int("units", 8, 64)
    space.Choice("act", ["relu", "tanh"])
    space.Float("lr", 1e-3, 1e-1, default=1e-2)
    assert carried_values(space, {"units": 16, "act": "tanh"}) == {
        "units": 16, "act": "tanh", "lr": 1e-2}  # what it lacks: the default
    assert carried_values(space, {"units": 128, "act": "relu"}) is None  # out of range
    assert carried_values(space, {"units": 16, "act": "gelu"}) is None  # not a choice
    assert carried_values(space, {"units": 16, "dropout": 0.1}) is None  # unknown name
    assert carried_values(space, {"units": 16, "tuner/epochs": 2}) is not None
