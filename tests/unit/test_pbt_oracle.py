"""PBT's rule, through the chief's own oracle host (real KerasTuner trials and state):
the population fills first; a member in the bottom quantile continues a top member's
trial (its weights and epoch count) with its floats perturbed and its structure kept;
the others continue themselves; each member ends at max_epochs; a restored host
decides as the one it replaces."""

from __future__ import annotations

import pytest

from tunecluster.engine.oracle_host import OracleHost
from tunecluster.errors import SpecError
from tunecluster.spec import parse_spec
from tunecluster.spec.space import build_space, space_to_json

HPS = {"n_neurons": {"int": [1, 100000]},
       "learning_rate": {"float": [1e-4, 1e-1], "sampling": "log"}}


def _spec(epochs: int = 3, **search: object):
    return parse_spec({"name": "pbt", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": HPS},
                       "train": {"epochs": epochs},
                       "search": {"algorithm": "pbt", "objective": "val_loss", "seed": 4,
                                  "pbt_population": 4, **search}})


def _host(**kwargs: object) -> OracleHost:
    spec = _spec(**kwargs)
    return OracleHost.create(spec, space_to_json(build_space(spec.model.hyperparameters)))


def _finish(host: OracleHost, trial: str, values: dict) -> None:
    for epoch in range(values["tuner/initial_epoch"], values["tuner/epochs"]):
        host.update(trial, epoch, {"val_loss": 1.0 / values["n_neurons"] + 1 / (epoch + 1)})
    host.end(trial, completed=True)


def test_spec_refuses_an_interval_as_long_as_training() -> None:
    with pytest.raises(SpecError, match=r"search.pbt_interval: must be below train.epochs"):
        _spec(epochs=2, pbt_interval=2)
    with pytest.raises(SpecError, match=r"search.pbt_quantile"):
        _spec(pbt_quantile=0.9)


def test_the_worst_member_exploits_the_best_and_explores_its_floats() -> None:
    host = _host()
    first = [host.create_trial() for _ in range(4)]
    assert [v["tuner/member"] for _s, _t, v in first] == [0, 1, 2, 3]
    assert all((v["tuner/initial_epoch"], v["tuner/epochs"]) == (0, 1) for _s, _t, v in first)
    assert host.create_trial()[0] == "IDLE"  # a full population waits for a stretch to end
    for _status, trial, values in first:
        _finish(host, trial, values)
    by_neurons = sorted(first, key=lambda m: m[2]["n_neurons"])
    worst, best = by_neurons[0], by_neurons[-1]
    made = [host.create_trial() for _ in range(4)]
    by_member = {v["tuner/member"]: (t, v) for _s, t, v in made}
    _trial, child = by_member[worst[2]["tuner/member"]]
    assert child["tuner/trial_id"] == best[1]  # the best member's weights
    assert child["tuner/exploited"] == best[2]["tuner/member"]
    assert child["n_neurons"] == best[2]["n_neurons"]  # the structure is the source's
    ratio = child["learning_rate"] / best[2]["learning_rate"]
    assert ratio == pytest.approx(0.8) or ratio == pytest.approx(1.25)
    assert (child["tuner/initial_epoch"], child["tuner/epochs"]) == (1, 2)
    for member in (m[2]["tuner/member"] for m in by_neurons[1:]):  # the rest go on as they were
        _trial, values = by_member[member]
        own = next(m for m in first if m[2]["tuner/member"] == member)
        assert values["tuner/trial_id"] == own[1] and "tuner/exploited" not in values
        assert values["learning_rate"] == own[2]["learning_rate"]


def _drive(host: OracleHost) -> list[tuple[str, dict]]:
    made = []
    for _ in range(200):
        status, trial, values = host.create_trial()
        if status == "STOPPED":
            return made
        assert status == "RUNNING", status
        made.append((trial, values))
        _finish(host, trial, values)
    raise AssertionError("the population never finished")


def test_every_member_trains_to_max_epochs_without_an_epoch_twice() -> None:
    host = _host(epochs=5, pbt_interval=2)
    made = _drive(host)
    by_id = dict(made)
    for _trial, values in made:
        parent = values.get("tuner/trial_id")
        if parent is not None:
            assert values["tuner/initial_epoch"] == by_id[parent]["tuner/epochs"]
    ends = {}
    for _trial, values in made:
        ends[values["tuner/member"]] = values["tuner/epochs"]
    assert ends == {0: 5, 1: 5, 2: 5, 3: 5}
    # stretches of 2, 2 and 1 epochs each; an exploit may skip one (the member jumps to
    # its source's epoch count with the source's weights)
    assert 4 < len(made) <= 4 * 3
    assert any("tuner/exploited" in v for _t, v in made)


def test_a_restored_host_decides_as_the_one_it_replaces() -> None:
    host = _host()
    first = [host.create_trial() for _ in range(4)]
    for _status, trial, values in first:
        _finish(host, trial, values)
    again = OracleHost.create(host.spec, host.space, host.state_json(),
                              host.trials_json(host.oracle.trials))
    assert [host.create_trial()[2] for _ in range(4)] == [
        again.create_trial()[2] for _ in range(4)]
