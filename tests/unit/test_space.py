"""Search space: spec hyperparameters -> real keras_tuner.HyperParameters, and back via JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras_tuner
import pytest

from tunecluster.spec import load_spec_file
from tunecluster.spec.models import HyperParameter
from tunecluster.spec.space import (
    build_space,
    hyperparameters_with_values,
    space_from_json,
    space_to_json,
)
from tunecluster.spec.space import register as register_hp

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def hp_of(**raw: Any) -> HyperParameter:
    return HyperParameter.model_validate(raw)


def one(raw: dict[str, Any]) -> Any:
    """The keras_tuner hyperparameter object a single spec entry becomes."""
    space = build_space({"x": hp_of(**raw)})
    assert isinstance(space, keras_tuner.HyperParameters)
    (param,) = space.space
    return param, space


def test_int_range_with_step_and_default() -> None:
    param, space = one({"int": [1, 9], "step": 2, "default": 3})
    assert isinstance(param, keras_tuner.engine.hyperparameters.Int)
    assert (param.min_value, param.max_value, param.step, param.sampling) == (1, 9, 2, "linear")
    assert isinstance(param.step, int)
    assert space.values["x"] == 3


def test_int_log_sampling_starts_at_min() -> None:
    param, space = one({"int": [16, 256], "sampling": "log"})
    assert param.sampling == "log"
    assert param.step is None
    assert space.values["x"] == 16


def test_float_log_and_reverse_log() -> None:
    param, _ = one({"float": [1e-4, 1e-2], "sampling": "log"})
    assert isinstance(param, keras_tuner.engine.hyperparameters.Float)
    assert (param.min_value, param.max_value, param.sampling) == (1e-4, 1e-2, "log")
    param, _ = one({"float": [0.1, 0.9], "sampling": "reverse_log"})
    assert param.sampling == "reverse_log"


def test_float_with_step_is_enumerable() -> None:
    param, space = one({"float": [0.0, 1.0], "step": 0.25, "default": 0.5})
    assert param.step == 0.25
    assert space.values["x"] == 0.5
    assert list(param.values) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_choice_keeps_values_and_default() -> None:
    param, space = one({"choice": ["sgd", "adam", "rmsprop"], "default": "adam"})
    assert isinstance(param, keras_tuner.engine.hyperparameters.Choice)
    assert param.values == ["sgd", "adam", "rmsprop"]
    assert space.values["x"] == "adam"


def test_choice_without_default_starts_at_first_value() -> None:
    _, space = one({"choice": [16, 32, 64]})
    assert space.values["x"] == 16


@pytest.mark.parametrize(("raw", "expected"), [
    ({"boolean": True}, True),
    ({"boolean": False}, False),
    ({"boolean": True, "default": False}, False),
])
def test_boolean(raw: dict[str, Any], expected: bool) -> None:
    param, space = one(raw)
    assert isinstance(param, keras_tuner.engine.hyperparameters.Boolean)
    assert space.values["x"] is expected


def test_fixed() -> None:
    param, space = one({"fixed": "adam"})
    assert isinstance(param, keras_tuner.engine.hyperparameters.Fixed)
    assert space.values["x"] == "adam"


def test_register_returns_the_current_value() -> None:
    space = keras_tuner.HyperParameters()
    assert register_hp(space, "n", hp_of(int=[2, 5], default=4)) == 4
    assert register_hp(space, "opt", hp_of(choice=["a", "b"])) == "a"


def test_example_space_has_every_hyperparameter() -> None:
    spec = load_spec_file(EXAMPLES / "digits.yaml")
    space = build_space(spec.model.hyperparameters)
    assert set(space.values) == {"n_hidden", "n_neurons", "learning_rate", "optimizer"}
    kinds = {p.name: type(p).__name__ for p in space.space}
    assert kinds == {"n_hidden": "Int", "n_neurons": "Int", "learning_rate": "Float",
                     "optimizer": "Choice"}


def test_json_round_trip() -> None:
    hps = {
        "a": hp_of(int=[1, 9], step=2, default=3),
        "b": hp_of(float=[1e-4, 1e-1], sampling="log"),
        "c": hp_of(choice=["x", "y"], default="y"),
        "d": hp_of(boolean=True),
        "e": hp_of(fixed=7),
        "f": hp_of(int=[1, 100], sampling="reverse_log"),
    }
    space = build_space(hps)
    wire = json.loads(json.dumps(space_to_json(space)))  # must survive real JSON
    again = space_from_json(wire)
    assert isinstance(again, keras_tuner.HyperParameters)
    assert again.values == space.values
    assert [p.get_config() for p in again.space] == [p.get_config() for p in space.space]
    assert space_to_json(again) == space_to_json(space)


def test_hyperparameters_with_values_sets_one_trial() -> None:
    space = build_space({"n": hp_of(int=[1, 9]), "opt": hp_of(choice=["sgd", "adam"])})
    hp = hyperparameters_with_values(space_to_json(space), {"n": 7, "opt": "adam"})
    assert hp.get("n") == 7
    assert hp.get("opt") == "adam"
    # a build_model(hp) that declares the same name again sees the trial's value
    assert hp.Int("n", 1, 9) == 7


def test_empty_space() -> None:
    space = build_space({})
    assert space.space == [] and space.values == {}
    assert space_from_json(space_to_json(space)).values == {}
