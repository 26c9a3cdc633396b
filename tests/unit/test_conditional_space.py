"""Hyperparameters that ``build_model`` declares only in some trials (KerasTuner's
conditional pattern, ``units_{i}`` for each of ``num_layers``): the worker reports them
with the trial's end, and the hosted oracle adds them to the search space as KerasTuner's
own tuner does, unless the job says ``tune_new_entries: false``."""

from __future__ import annotations

import json

import keras_tuner as kt

from tunecluster.engine.oracle_host import OracleHost
from tunecluster.spec import parse_spec

SOURCE = "def build_model(hp):\n    raise NotImplementedError\n"


def _space() -> kt.HyperParameters:
    hp = kt.HyperParameters()
    hp.Int("layers", 1, 3)
    hp.Int("units_0", 8, 64, step=8)
    return hp


def _host(**model: object) -> OracleHost:
    spec = parse_spec({"name": "cond", "data": {"dataset": "digits"},
                       "model": {"module": "m.py", "source": SOURCE, **model},
                       "search": {"algorithm": "random", "objective": "val_loss",
                                  "max_trials": 50, "seed": 1}})
    return OracleHost.create(spec, _space().get_config())


def _grown(values: dict[str, object], units_1: int) -> str:
    """What a worker reports for a trial whose build declared units_1 (built with
    ``values``, the trial's own)."""
    hp = _space()
    hp.values.update(values)
    hp.Int("units_1", 8, 64, step=8)  # registered by the build (with its default)
    hp.values["units_1"] = units_1
    return json.dumps(hp.get_config())


def _end_with_units_1(host: OracleHost, units_1: int = 8) -> tuple[str, dict]:
    status, trial, values = host.create_trial()
    assert status == "RUNNING" and trial is not None and "units_1" not in values
    host.update(trial, 1, {"val_loss": 0.5})
    host.end(trial, completed=True, grown_space=_grown(values, units_1))
    return trial, values


def test_a_hyperparameter_declared_in_a_trial_joins_the_space() -> None:
    host = _host()
    trial, values = _end_with_units_1(host, units_1=8)
    ended = host.oracle.trials[trial].hyperparameters
    assert ended.values["units_1"] == 8 and ended.values["layers"] == values["layers"]
    assert "units_1" in [p.name for p in host.oracle.hyperparameters.space]
    later = [host.create_trial()[2] for _ in range(12)]
    assert all("units_1" in v for v in later)  # now searched in every new trial
    assert len({v["units_1"] for v in later}) > 1  # sampled, not a constant default
    # and it survives a chief restart (the persisted state holds the grown space)
    again = OracleHost.create(host.spec, host.space, host.state_json(),
                              host.trials_json(host.oracle.trials))
    assert "units_1" in [p.name for p in again.oracle.hyperparameters.space]


def test_with_tune_new_entries_false_the_trial_keeps_its_values_and_the_space_stays() -> None:
    host = _host(tune_new_entries=False)
    trial, _ = _end_with_units_1(host, units_1=8)
    assert host.oracle.trials[trial].hyperparameters.values["units_1"] == 8
    assert "units_1" not in [p.name for p in host.oracle.hyperparameters.space]
    assert "units_1" not in host.create_trial()[2]


def test_a_report_never_changes_the_trials_own_values_and_junk_is_ignored() -> None:
    host = _host()
    status, trial, values = host.create_trial()
    forged = json.loads(_grown({**values, "layers": 3 if values["layers"] != 3 else 1}, 16))
    host.update(trial, 1, {"val_loss": 0.5})
    host.end(trial, completed=True, grown_space=json.dumps(forged))
    ended = host.oracle.trials[trial].hyperparameters.values
    assert ended["layers"] == values["layers"] and ended["units_1"] == 16
    for junk in ("not json", "[]", '{"space": [{"class_name": "os.system", "config": {}}]}',
                 '{"space": 3}'):
        status, trial, _ = host.create_trial()
        host.update(trial, 1, {"val_loss": 0.5})
        host.end(trial, completed=True, grown_space=junk)
        assert host.oracle.trials[trial].status == "COMPLETED"


def test_tune_new_entries_is_for_module_models_only() -> None:
    import pytest

    from tunecluster.errors import SpecError

    with pytest.raises(SpecError, match="tune_new_entries"):
        parse_spec({"name": "x", "data": {"dataset": "digits"},
                    "model": {"builtin": "mlp", "tune_new_entries": False}})
