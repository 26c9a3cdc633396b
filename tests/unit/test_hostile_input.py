"""Hostile and bad input: generated malformed specs and overrides are refused with one
line naming a field, never with a crash; nothing pickled ever crosses Redis."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunecluster.errors import SpecError
from tunecluster.spec import apply_overrides, parse_spec

ROOT = Path(__file__).resolve().parents[2]
GOOD = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)
paths = st.sampled_from([
    "name", "data", "data.dataset", "data.split.valid", "data.split.seed", "data.path",
    "model", "model.builtin", "model.task", "model.input", "model.hyperparameters",
    "model.hyperparameters.n_hidden", "model.hyperparameters.n_hidden.int",
    "model.hyperparameters.learning_rate.sampling", "model.hyperparameters.optimizer.choice",
    "search", "search.algorithm", "search.objective", "search.max_trials",
    "search.max_retries_per_trial", "train.epochs", "train.batch_size",
    "train.early_stopping", "resources.strategy", "scheduler", "priority", "extra_key",
    "search.objective.direction", "train.mixed_precision"])


def _mutate(spec: dict, path: str, value: object) -> dict:
    spec = yaml.safe_load(yaml.safe_dump(spec))
    node = spec
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return spec


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=paths, value=values)
def test_generated_specs_are_accepted_or_refused_in_one_line(path: str, value: object) -> None:
    try:
        parse_spec(_mutate(GOOD, path, value))
    except SpecError as exc:
        text = str(exc)
        assert "\n" not in text and text.strip()
        assert re.match(r"^[A-Za-z_][\w.\-/]*: |^[a-z]", text), text


@settings(max_examples=500, deadline=None)
@given(override=st.text(max_size=40))
def test_generated_overrides_never_crash(override: str) -> None:
    try:
        parse_spec(apply_overrides(GOOD, [override]))
    except SpecError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(doc=st.text(max_size=200))
def test_arbitrary_yaml_text_never_crashes(doc: str, tmp_path_factory) -> None:
    from tunecluster.spec import load_spec_file

    path = tmp_path_factory.mktemp("fuzz") / "job.yaml"
    path.write_text(doc)
    try:
        load_spec_file(path)
    except SpecError as exc:
        assert "\n" not in str(exc)


MALFORMED = {
    "search.algorithm=bayes": "search.algorithm",
    "search.max_trials=0": "search.max_trials",
    "search.objective=val_accuracy_typo": "search.objective",
    "search.objective=accuracy": "search.objective",
    "model.task=regression": "model.task",
    "model.builtin=cnn": "model.builtin",
    "model.hyperparameters.n_hidden={int: [3, 1]}": "model.hyperparameters.n_hidden",
    "model.hyperparameters.learning_rate={float: [0, 1], sampling: log}":
        "model.hyperparameters.learning_rate",
    "model.hyperparameters.optimizer={choice: [sgd, adamax]}": "model.hyperparameters.optimizer",
    "model.hyperparameters.depth={int: [1, 3]}": "model.hyperparameters.depth",
    "train.epochs=-1": "train.epochs",
    "train.batch_size=big": "train.batch_size",
    "data.dataset=cifar100": "data",
    "data.split.valid=0.75": "data.split",
    "resources.strategy=tpu": "resources.strategy",
    "scheduler=slurm": "scheduler",
    "name=Bad Name!": "name",
    "surprise=1": "surprise",
    "search.algorithm=grid": "model.hyperparameters.learning_rate",
    "train.early_stopping.patience=-2": "train.early_stopping.patience",
}


@pytest.mark.parametrize("override,field", sorted(MALFORMED.items()))
def test_cli_validate_refuses_malformed_specs_with_exit_2(override: str, field: str) -> None:
    out = subprocess.run([sys.executable, "-m", "tunecluster", "validate",
                          str(ROOT / "examples" / "digits.yaml"), "--set", override],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"spec error: {field}"), lines[0]


def test_no_pickle_in_the_package() -> None:
    for path in (ROOT / "src" / "tunecluster").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle)\b", text, re.M), path
        assert "allow_pickle=True" not in text, path
