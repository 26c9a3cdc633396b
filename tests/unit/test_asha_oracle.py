"""ASHA's rule, through the chief's own oracle host (real KerasTuner trials and state):
rungs, promotion of the top 1/factor as soon as a rung allows it, continuations that
start where their parent ended, a finite search that still reaches max_epochs, and a
restored host that promotes exactly as the one it replaces."""

from __future__ import annotations

import pytest

from tunecluster.engine.asha_oracle import rung_epochs
from tunecluster.engine.oracle_host import OracleHost
from tunecluster.errors import SpecError
from tunecluster.spec import parse_spec
from tunecluster.spec.space import build_space, space_to_json

HPS = {"n_neurons": {"int": [1, 100000]},
       "learning_rate": {"float": [1e-5, 1.0], "sampling": "log"}}


def _spec(max_trials: int = 9, epochs: int = 9, **search: object):
    return parse_spec({"name": "asha", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": HPS},
                       "train": {"epochs": epochs},
                       "search": {"algorithm": "asha", "objective": "val_loss",
                                  "max_trials": max_trials, "seed": 5, **search}})


def _host(**kwargs: object) -> OracleHost:
    spec = _spec(**kwargs)
    return OracleHost.create(spec, space_to_json(build_space(spec.model.hyperparameters)))


def _loss(values: dict) -> float:
    return 1.0 / values["n_neurons"]  # the more neurons, the better: a known ranking


def _finish(host: OracleHost, trial: str, values: dict) -> None:
    for epoch in range(values["tuner/initial_epoch"], values["tuner/epochs"]):
        host.update(trial, epoch, {"val_loss": _loss(values) + 1.0 / (epoch + 1)})
    host.end(trial, completed=True)


def test_rungs_end_at_min_epochs_times_factor_powers_then_max_epochs() -> None:
    assert rung_epochs(1, 3, 9) == [1, 3, 9]
    assert rung_epochs(2, 3, 10) == [2, 6, 10]
    assert rung_epochs(1, 2, 5) == [1, 2, 4, 5]
    with pytest.raises(ValueError):
        rung_epochs(9, 3, 9)


def test_spec_refuses_a_first_rung_at_or_past_the_last_epoch() -> None:
    with pytest.raises(SpecError, match=r"search.asha_min_epochs: must be below train.epochs"):
        _spec(epochs=3, asha_min_epochs=3)
    with pytest.raises(SpecError, match=r"search.algorithm: asha runs on the native"):
        parse_spec({"name": "a", "data": {"dataset": "digits"}, "scheduler": "ray",
                    "model": {"builtin": "mlp", "hyperparameters": HPS},
                    "search": {"algorithm": "asha"}})


def test_the_best_of_three_is_promoted_as_soon_as_the_third_ends() -> None:
    host = _host()
    made = [host.create_trial() for _ in range(3)]
    for status, _trial, values in made:
        assert status == "RUNNING"
        assert (values["tuner/epochs"], values["tuner/initial_epoch"],
                values["tuner/round"]) == (1, 0, 0)
        assert "tuner/trial_id" not in values
    _finish(host, made[0][1], made[0][2])
    _finish(host, made[1][1], made[1][2])
    # two done: floor(2/3) = 0 promotions, so a new configuration is drawn
    status, fourth, values = host.create_trial()
    assert values["tuner/round"] == 0 and "tuner/trial_id" not in values
    _finish(host, made[2][1], made[2][2])
    status, trial, values = host.create_trial()
    best = max(made[:3], key=lambda m: m[2]["n_neurons"])
    assert status == "RUNNING" and values["tuner/trial_id"] == best[1]
    assert (values["tuner/initial_epoch"], values["tuner/epochs"], values["tuner/round"]) == (
        1, 3, 1)
    assert values["n_neurons"] == best[2]["n_neurons"]
    assert values["learning_rate"] == best[2]["learning_rate"]


def _drive(host: OracleHost, limit: int = 200) -> list[tuple[str, dict]]:
    """Run the search to its end, one trial at a time; the trials in creation order."""
    made = []
    for _ in range(limit):
        status, trial, values = host.create_trial()
        if status == "STOPPED":
            return made
        assert status == "RUNNING", status
        made.append((trial, values))
        _finish(host, trial, values)
    raise AssertionError("the search did not stop")


def test_a_finite_search_trains_its_best_configuration_to_max_epochs() -> None:
    host = _host(max_trials=9)
    made = _drive(host)
    by_id = dict(made)
    drawn = [t for t, v in made if v["tuner/round"] == 0]
    assert len(drawn) == 9
    per_rung = [sum(1 for _, v in made if v["tuner/round"] == r) for r in range(3)]
    assert per_rung == [9, 3, 1]
    for _trial, values in made:
        parent = values.get("tuner/trial_id")
        if parent is not None:  # continues exactly where its parent ended
            assert values["tuner/initial_epoch"] == by_id[parent]["tuner/epochs"]
    top = [v for _, v in made if v["tuner/round"] == 2]
    assert top[0]["n_neurons"] == max(v["n_neurons"] for v in by_id.values())
    assert len({v.get("tuner/trial_id") for _, v in made} - {None}) == 4  # each once


def test_a_configuration_is_drawn_once_and_no_trial_continued_twice() -> None:
    small = {"n_neurons": {"choice": [1, 2, 3, 4]}}
    spec = parse_spec({"name": "asha", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": small},
                       "train": {"epochs": 4},
                       "search": {"algorithm": "asha", "objective": "val_loss",
                                  "max_trials": 50, "asha_factor": 2, "seed": 1}})
    host = OracleHost.create(spec, space_to_json(build_space(spec.model.hyperparameters)))
    made = _drive(host)
    drawn = [v["n_neurons"] for _, v in made if v["tuner/round"] == 0]
    assert sorted(drawn) == [1, 2, 3, 4]  # the space ran out before max_trials
    parents = [v["tuner/trial_id"] for _, v in made if "tuner/trial_id" in v]
    assert len(parents) == len(set(parents))
    assert [v["n_neurons"] for _, v in made if v["tuner/round"] == 2] == [4]


def test_a_restored_host_promotes_as_the_one_it_replaces() -> None:
    host = _host(max_trials=9)
    running = []
    for _ in range(6):
        _status, trial, values = host.create_trial()
        running.append((trial, values))
    for trial, values in running[:4]:
        _finish(host, trial, values)
    again = OracleHost.create(host.spec, host.space, host.state_json(),
                              host.trials_json(host.oracle.trials))
    first = host.create_trial()
    second = again.create_trial()
    assert first[0] == second[0] == "RUNNING"
    assert first[2] == second[2] and first[2]["tuner/round"] == 1
