"""The TPE oracle (Optuna's TPE sampler behind KerasTuner's Oracle): its space mapping,
its restore from the trials alone, and the constant liar that keeps concurrent
suggestions apart. Real KerasTuner and real optuna; no cluster."""

from __future__ import annotations

import statistics
import sys
from typing import Any

import keras_tuner as kt
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tunecluster.engine.oracle_host import OracleHost, _oracle_class
from tunecluster.engine.tpe_oracle import TPEOracle, distribution
from tunecluster.errors import SpecError
from tunecluster.spec import parse_spec
from tunecluster.spec.space import build_space, space_to_json

HPS = {"n_hidden": {"int": [0, 3]}, "n_neurons": {"int": [8, 256], "sampling": "log"},
       "learning_rate": {"float": [1e-4, 1e-1], "sampling": "log"},
       "optimizer": {"choice": ["sgd", "adam"]}, "dropout": {"float": [0.0, 0.5]}}


def _spec(**search: Any) -> Any:
    return parse_spec({"name": "tpe", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": HPS},
                       "search": {"algorithm": "tpe", "objective": "val_loss",
                                  "max_trials": 200, "seed": 7, "tpe_startup_trials": 5,
                                  **search}})


def _host(**search: Any) -> OracleHost:
    spec = _spec(**search)
    return OracleHost.create(spec, space_to_json(build_space(spec.model.hyperparameters)))


def _loss(values: dict[str, Any]) -> float:
    return (values["learning_rate"] - 0.01) ** 2 * 1e4 + values["n_hidden"] + values["dropout"]


def _run(host: OracleHost, n: int, fail_every: int = 0) -> None:
    for i in range(n):
        status, trial, values = host.create_trial()
        assert status == "RUNNING" and trial is not None
        failed = bool(fail_every) and i % fail_every == fail_every - 1
        if not failed:
            host.update(trial, 1, {"val_loss": _loss(values)})
        host.end(trial, completed=not failed, message="boom" if failed else None)


def _oracle(space: kt.HyperParameters, seed: int = 4, liar: bool = True) -> Any:
    cls = _oracle_class("tpe")
    cls.constant_liar = liar
    oracle = cls(objective=kt.Objective("loss", "min"), max_trials=100,
                 num_initial_points=10, seed=seed, hyperparameters=space)
    oracle.verbose = 0
    return oracle


def test_each_kind_of_hyperparameter_maps_to_its_optuna_distribution() -> None:
    from keras_tuner.engine.hyperparameters import Boolean, Choice, Fixed, Float, Int

    cases = [
        (Int("units", 3, 10, step=2), IntDistribution(3, 9, step=2)),
        (Int("width", 8, 256, sampling="log"), IntDistribution(8, 256, log=True)),
        (Int("grid", 2, 32, step=2, sampling="log"), CategoricalDistribution(
            (2, 4, 8, 16, 32))),
        (Float("rate", 0.0, 0.5), FloatDistribution(0.0, 0.5)),
        (Float("stepped", 0.0, 1.0, step=0.25), FloatDistribution(0.0, 1.0, step=0.25)),
        (Float("lr", 1e-4, 1e-1, sampling="log"), FloatDistribution(1e-4, 1e-1, log=True)),
        (Choice("opt", ["sgd", "adam"]), CategoricalDistribution(("sgd", "adam"))),
        (Boolean("bn"), CategoricalDistribution((False, True))),
    ]
    for param, expected in cases:
        assert distribution(param) == (expected, False), param.name
    assert distribution(Fixed("seed", 3)) is None
    # no optuna distribution for a continuous reverse-log range: KerasTuner's own
    # probabilities in [0, 1] travel instead
    assert distribution(Float("rev", 0.1, 1.0, sampling="reverse_log")) == (
        FloatDistribution(0.0, 1.0), True)


def test_suggestions_fit_the_space_fixed_and_conditional_ones_too() -> None:
    space = kt.HyperParameters()
    space.Choice("kind", ["mlp", "cnn"])
    space.Fixed("seed", 3)
    space.Float("rev", 0.1, 1.0, sampling="reverse_log")
    space.Int("grid", 2, 32, step=2, sampling="log")
    space.Boolean("bn")
    with space.conditional_scope("kind", ["cnn"]):
        space.Int("filters", 4, 64, step=4)
    oracle = _oracle(space)
    # what the hook answers, copied (KerasTuner drops inactive values from it later)
    suggested: list[dict[str, Any]] = []
    hook = oracle.populate_space
    oracle.populate_space = lambda tid: suggested.append(dict(hook(tid)["values"])) or {
        "status": "RUNNING", "values": dict(suggested[-1])}
    for i in range(24):
        trial = oracle.create_trial(f"t{i}")
        values = trial.hyperparameters.values
        assert values == suggested[-1]
        assert values["seed"] == 3 and isinstance(values["bn"], bool)
        assert 0.1 <= values["rev"] <= 1.0 and values["grid"] in (2, 4, 8, 16, 32)
        assert ("filters" in values) == (values["kind"] == "cnn")
        if "filters" in values:
            assert values["filters"] in range(4, 65, 4)
        oracle.update_trial(trial.trial_id, {"loss": float(values.get("filters", 70))})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    # TPE past its 10 random trials: the best region (cnn, few filters) is where it looks
    last = [oracle.trials[t].hyperparameters.values for t in oracle.start_order[-8:]]
    assert sum(v["kind"] == "cnn" for v in last) >= 6


def test_the_study_mirrors_every_trial_failed_and_running_ones_too() -> None:
    host = _host()
    _run(host, 12, fail_every=4)
    running = [host.create_trial()[1] for _ in range(2)]
    study = host.oracle._synced_study()
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 3 and states.count(TrialState.RUNNING) == 2
    assert states.count(TrialState.COMPLETE) == 9
    for number, tid in enumerate(host.oracle.start_order):
        trial = host.oracle.trials[tid]
        frozen = study.trials[number]
        assert frozen.params == {k: v for k, v in trial.hyperparameters.values.items()
                                 if k in HPS}
        if frozen.state == TrialState.COMPLETE:
            assert frozen.value == trial.score
    assert {host.oracle.start_order[t.number] for t in study.trials
            if t.state == TrialState.RUNNING} == set(running)
    # kept up to date incrementally, it equals the study rebuilt from the trials
    rebuilt = host.oracle._rebuild()
    assert [(t.state, t.params, t.value) for t in rebuilt.trials] == [
        (t.state, t.params, t.value) for t in study.trials]


def test_a_restored_oracle_suggests_what_the_uninterrupted_one_would() -> None:
    host = _host()
    _run(host, 14, fail_every=5)  # past the 5 random trials: TPE's own suggestions
    host.create_trial()  # one still running when the chief goes
    again = OracleHost.create(host.spec, host.space, host.state_json(),
                              host.trials_json(host.oracle.trials))
    for _ in range(3):
        expected, got = host.create_trial(), again.create_trial()
        assert got == expected
    _run(host, 2)
    _run(again, 2)
    assert again.create_trial() == host.create_trial()


def test_concurrent_suggestions_spread_out_by_the_constant_liar() -> None:
    """Eight trials asked while none of them has ended: with the liar (the running ones
    count as the worst score), they spread over the range; without it TPE piles them
    onto the one region it believes best."""

    def spread(liar: bool) -> float:
        space = kt.HyperParameters()
        space.Float("x", 0.0, 1.0)
        oracle = _oracle(space, liar=liar)
        for i in range(20):  # the best x is 0.3
            _finish_x(oracle, f"t{i}")
        xs = [oracle.create_trial(f"r{i}").hyperparameters.values["x"] for i in range(8)]
        return statistics.pstdev(xs)

    try:
        with_liar, without = spread(True), spread(False)
    finally:
        _oracle_class("tpe").constant_liar = True
    assert with_liar > 0.12 and with_liar > 3 * without, (with_liar, without)


def _finish_x(oracle: Any, tuner_id: str) -> None:
    trial = oracle.create_trial(tuner_id)
    oracle.update_trial(trial.trial_id, {"loss": (trial.hyperparameters.values["x"] - 0.3) ** 2})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)


def test_without_optuna_a_tpe_job_fails_with_the_install_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(ValueError) as err:
        _host()
    assert str(err.value) == ("search.algorithm: tpe needs optuna where the chief runs:"
                              " pip install 'tunecluster[tpe]'")


def test_tpe_settings_are_checked_at_the_edge() -> None:
    assert _spec().search.tpe_startup_trials == 5
    assert parse_spec({"name": "d", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp"}, "search": {"algorithm": "tpe"}}
                      ).search.tpe_startup_trials == 10
    with pytest.raises(SpecError, match="tpe_startup_trials"):
        _spec(tpe_startup_trials=-1)
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "r", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"},
                    "search": {"algorithm": "tpe"}, "scheduler": "ray"})
    assert "\n" not in str(err.value) and "search.algorithm" in str(err.value)
    assert "native scheduler" in str(err.value)


def test_the_drop_in_tpe_tuner_states_the_search_as_a_tpe_job() -> None:
    from tunecluster.api.tuner_inputs import oracle_settings

    oracle = TPEOracle(objective="val_accuracy", max_trials=4, num_initial_points=2, seed=5)
    settings = oracle_settings(oracle)
    assert settings["algorithm"] == "tpe" and settings["max_trials"] == 4
    assert settings["seed"] == 5 and settings["extra"] == {"tpe_startup_trials": 2}
