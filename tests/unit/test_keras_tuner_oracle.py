"""``tuner.oracle`` of the drop-in is the KerasTuner oracle object the tuner was built
on (its class, its identity, its given space), usable by hand as KerasTuner's before a
search, and it takes the chief's persisted state as KerasTuner's reload does (here
from a state written by the chief's own oracle host, the code the chief runs)."""

from __future__ import annotations

import keras
import keras_tuner
import pytest

import tunecluster.keras_tuner as kt
from tunecluster.engine.oracle_host import OracleHost
from tunecluster.spec import parse_spec
from tunecluster.spec.space import build_space, space_to_json


def build_model(hp):
    model = keras.Sequential([keras.Input((2,)),
                              keras.layers.Dense(hp.Int("units", 2, 8)),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_the_oracle_is_the_object_given_of_its_own_class(tmp_path) -> None:
    oracle = keras_tuner.oracles.BayesianOptimizationOracle(
        objective="val_accuracy", max_trials=5, alpha=1e-3)
    tuner = kt.Tuner(oracle=oracle, hypermodel=build_model, directory=tmp_path)
    assert tuner.oracle is oracle
    assert isinstance(tuner.oracle, keras_tuner.oracles.BayesianOptimizationOracle)
    assert tuner.oracle.alpha == 1e-3 and tuner.oracle.max_trials == 5
    assert isinstance(kt.Hyperband(build_model, objective="val_loss", max_epochs=4,
                                   directory=tmp_path).oracle,
                      keras_tuner.oracles.HyperbandOracle)


def test_by_hand_it_creates_and_ends_trials_as_keras_tuners(tmp_path) -> None:
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=2,
                            directory=tmp_path)
    first = tuner.oracle.create_trial("a")
    assert first.status == "RUNNING" and "units" in first.hyperparameters.values
    tuner.oracle.update_trial(first.trial_id, {"val_accuracy": 0.5})
    first.status = "COMPLETED"
    tuner.oracle.end_trial(first)
    tuner.oracle.create_trial("b")
    assert tuner.oracle.create_trial("c").status == "STOPPED"  # max_trials=2
    assert [t.trial_id for t in tuner.oracle.get_best_trials()] == [first.trial_id]


def test_a_given_space_is_kept_as_given(tmp_path) -> None:
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 2, 4)
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=2,
                            hyperparameters=hp, directory=tmp_path)
    assert tuner.oracle.hyperparameters is hp
    hp2 = keras_tuner.HyperParameters()
    hp2.Choice("other", [1, 2])
    fixed = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=2,
                            hyperparameters=hp2, tune_new_entries=False, directory=tmp_path)
    assert [p.name for p in fixed.oracle.hyperparameters.space] == ["other"]


class _Job:
    """What ``sync`` reads of a job: its id and the chief's persisted oracle."""

    def __init__(self, state: str, trials: dict[str, str]) -> None:
        self.id, self._state = "j-1", (state, trials)
        self.client = type("C", (), {"store": type("S", (), {"jobs": self})()})()

    def oracle_state(self, job: str) -> tuple[str, dict[str, str]]:
        return self._state


def _chief_state(epochs: int = 4) -> OracleHost:
    spec = parse_spec({"name": "hb", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp",
                                 "hyperparameters": {"n_neurons": {"int": [1, 100]}}},
                       "train": {"epochs": epochs},
                       "search": {"algorithm": "hyperband", "objective": "val_loss",
                                  "hyperband_factor": 2, "max_trials": 20, "seed": 1}})
    host = OracleHost.create(spec, space_to_json(build_space(spec.model.hyperparameters)))
    for _ in range(3):
        _status, trial, _values = host.create_trial()
        host.update(trial, 0, {"val_loss": 0.5})
        host.update(trial, 1, {"val_loss": 0.25})
        host.end(trial, completed=True)
    return host


def test_sync_takes_the_chiefs_trials_and_algorithm_state(tmp_path) -> None:
    host = _chief_state()
    tuner = kt.Hyperband(build_model, objective="val_loss", max_epochs=4, factor=2,
                         directory=tmp_path)
    tuner.job = _Job(host.state_json(), host.trials_json(host.oracle.trials))
    assert tuner.oracle.sync()
    assert sorted(tuner.oracle.trials) == sorted(host.oracle.trials)
    trial = next(iter(tuner.oracle.trials.values()))
    assert [o.value[0] for o in trial.metrics.get_history("val_loss")] == [0.5, 0.25]
    assert tuner.oracle._brackets == host.oracle._brackets
    assert "n_neurons" in tuner.oracle.hyperparameters.values


def test_a_record_that_does_not_parse_leaves_the_oracle_as_it_was(tmp_path) -> None:
    host = _chief_state()
    tuner = kt.Hyperband(build_model, objective="val_loss", max_epochs=4, factor=2,
                         directory=tmp_path)
    trials = host.trials_json(host.oracle.trials)
    trials[next(iter(trials))] = '{"not": "a trial"'
    tuner.job = _Job(host.state_json(), trials)
    before = dict(tuner.oracle.trials)
    assert not tuner.oracle.sync()
    assert tuner.oracle.trials == before


@pytest.mark.parametrize("state", ["[]", '{"ongoing_trials": 3}'])
def test_a_foreign_state_leaves_the_oracle_as_it_was(tmp_path, state: str) -> None:
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=2,
                            directory=tmp_path)
    tuner.job = _Job(state, {})
    assert not tuner.oracle.sync() and tuner.oracle.trials == {}
