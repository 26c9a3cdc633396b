"""``space_config`` (no KerasTuner import) writes exactly KerasTuner's own space config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunecluster.spec import load_spec_file
from tunecluster.spec.models import HyperParameter
from tunecluster.spec.space import build_space, space_config, space_from_json, space_to_json

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CASES: list[dict[str, Any]] = [
    {"int": [1, 3]},
    {"int": [16, 256], "sampling": "log"},
    {"int": [16, 256], "step": 16},
    {"int": [2, 64], "step": 2, "sampling": "log"},
    {"int": [1, 100], "sampling": "reverse_log", "default": 10},
    {"int": [1, 9], "step": 2.0, "default": 3},
    {"float": [1e-4, 1e-2], "sampling": "log"},
    {"float": [0.0, 1.0], "step": 0.25, "default": 0.5},
    {"float": [0, 1], "default": 0},
    {"float": [0.1, 0.9], "sampling": "reverse_log", "default": 0.3},
    {"choice": ["sgd", "adam"]},
    {"choice": ["sgd", "adam", "rmsprop"], "default": "adam"},
    {"choice": [16, 32, 64], "default": 32},
    {"choice": [0.1, 0.5]},
    {"choice": [True, False]},
    {"choice": [False, True], "default": True},
    {"boolean": True},
    {"boolean": False},
    {"boolean": True, "default": False},
    {"fixed": 7},
    {"fixed": "adam"},
    {"fixed": 0.5},
    {"fixed": True},
]


@pytest.mark.parametrize("raw", CASES, ids=[json.dumps(c) for c in CASES])
def test_one_hyperparameter_matches_keras_tuner(raw: dict[str, Any]) -> None:
    hps = {"x": HyperParameter.model_validate(raw)}
    ours = space_config(hps)
    theirs = space_to_json(build_space(hps))
    assert ours == theirs
    # and the same types (1 is not 1.0, True is not 1), through real JSON
    assert json.dumps(ours) == json.dumps(theirs)


def test_every_case_at_once_and_kerastuner_reads_it_back() -> None:
    hps = {f"h{i}": HyperParameter.model_validate(raw) for i, raw in enumerate(CASES)}
    ours = space_config(hps)
    assert json.dumps(ours) == json.dumps(space_to_json(build_space(hps)))
    assert space_to_json(space_from_json(json.loads(json.dumps(ours)))) == ours


@pytest.mark.parametrize("name", ["digits.yaml", "regression.yaml"])
def test_examples(name: str) -> None:
    spec = load_spec_file(EXAMPLES / name)
    hps = spec.model.hyperparameters
    assert json.dumps(space_config(hps)) == json.dumps(space_to_json(build_space(hps)))
