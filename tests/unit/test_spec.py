"""Job spec: field validation, cross-field rules, YAML loading, overrides, directions."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from tunecluster.errors import SpecError
from tunecluster.spec import (
    JobSpec,
    apply_overrides,
    load_spec_file,
    parse_spec,
    parse_yaml,
    spec_from_json,
    spec_to_json,
)
from tunecluster.spec.objective import infer_direction

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BASE: dict[str, Any] = {
    "name": "job-1",
    "data": {"dataset": "digits"},
    "model": {"builtin": "mlp"},
}

CUSTOM_SOURCE = "def build_model(hp):\n    return None\n"


def job(**sections: Any) -> dict[str, Any]:
    """A valid raw job with some sections replaced (a section given as None is dropped)."""
    raw = copy.deepcopy(BASE)
    for key, value in sections.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def reject(raw: Any) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    return info.value


def assert_one_line(error: SpecError, path: str, *fragments: str) -> None:
    text = str(error)
    assert "\n" not in text, text
    assert error.path == path, text
    assert text.startswith(f"{path}: "), text
    for fragment in fragments:
        assert fragment in text, text


# --- good specs ----------------------------------------------------------------------


def test_minimal_job_fills_every_default() -> None:
    spec = parse_spec(job())
    assert isinstance(spec, JobSpec)
    assert spec.model.task == "classification"
    assert spec.model.input == "flatten"
    assert spec.search.algorithm == "random"
    assert spec.search.objective_name == "val_loss"
    assert spec.search.direction == "min"
    assert (spec.data.split.valid, spec.data.split.test, spec.data.split.seed) == (0.2, 0.2, 42)
    assert spec.train.epochs == 10 and spec.train.batch_size == 32
    assert spec.resources.strategy == "auto"
    assert spec.scheduler == "native"


def test_regression_builtin_defaults_to_normalize_input() -> None:
    spec = parse_spec(job(data={"dataset": "diabetes"},
                          model={"builtin": "mlp", "task": "regression"}))
    assert spec.model.input == "normalize"


@pytest.mark.parametrize("name", ["digits.yaml", "regression.yaml", "custom.yaml"])
def test_every_example_loads(name: str) -> None:
    spec = load_spec_file(EXAMPLES / name)
    assert spec.name
    assert spec.search.direction in ("min", "max")


def test_example_directions() -> None:
    assert load_spec_file(EXAMPLES / "digits.yaml").search.direction == "max"
    assert load_spec_file(EXAMPLES / "regression.yaml").search.direction == "min"


def test_custom_example_carries_its_module_source() -> None:
    spec = load_spec_file(EXAMPLES / "custom.yaml")
    assert not spec.model.is_builtin
    assert spec.model.source == (EXAMPLES / "custom_model.py").read_text()
    assert "def build_model(hp)" in spec.model.source


def test_json_round_trip_keeps_the_spec() -> None:
    spec = load_spec_file(EXAMPLES / "custom.yaml")
    again = spec_from_json(spec_to_json(spec))
    assert again == spec
    assert again.model.source == spec.model.source


def test_json_round_trip_keeps_the_nulls_that_differ_from_a_default() -> None:
    black_box = "def run_trial(trial, *args, **kwargs):\n    return 1.0\n"
    spec = parse_spec(job(model={"module": "m.py", "source": black_box, "function": None,
                                 "run_trial": "run_trial"},
                          search={"algorithm": "bayesian", "num_initial_points": None}))
    again = spec_from_json(spec_to_json(spec))
    assert again.model.function is None and again.search.num_initial_points is None
    assert again == spec


def test_custom_model_accepts_its_own_metric_with_direction() -> None:
    spec = parse_spec(job(
        model={"module": "m.py", "source": CUSTOM_SOURCE},
        search={"objective": {"name": "val_my_score", "direction": "max"}},
    ))
    assert spec.search.objective_name == "val_my_score"
    assert spec.search.direction == "max"


def test_grid_search_accepts_stepped_float_and_choices() -> None:
    spec = parse_spec(job(
        search={"algorithm": "grid"},
        model={"builtin": "mlp", "hyperparameters": {
            "learning_rate": {"float": [0.001, 0.011], "step": 0.005},
            "optimizer": {"choice": ["sgd", "adam"]},
            "n_hidden": {"int": [1, 3]},
        }},
    ))
    assert all(hp.is_finite for hp in spec.model.hyperparameters.values())


def test_hyperband_with_two_epochs_is_fine() -> None:
    spec = parse_spec(job(search={"algorithm": "hyperband"}, train={"epochs": 2}))
    assert spec.search.algorithm == "hyperband"


def test_files_source_is_accepted() -> None:
    spec = parse_spec(job(data={"files": {"train": "a.csv", "valid": "b.csv", "test": "c.csv"},
                                "target": "y"}))
    assert spec.data.files is not None and spec.data.files.valid == "b.csv"


# --- malformed specs: one line naming the field -------------------------------------

MLP = {"builtin": "mlp"}


def mlp_with(**hps: Any) -> dict[str, Any]:
    return {"builtin": "mlp", "hyperparameters": hps}


BAD_SPECS = [
    pytest.param(job(bogus=1), "bogus",
                 ["unknown key 'bogus'", "allowed: name, data, model, search, train"],
                 id="unknown-top-level-key"),
    pytest.param(job(data={"dataset": "digits", "dataset_name": "x"}), "data.dataset_name",
                 ["unknown key", "allowed: dataset, path, target, files, split"],
                 id="unknown-data-key"),
    pytest.param(job(data={"dataset": "digits", "split": {"valid": 0.2, "tset": 0.2}}),
                 "data.split.tset", ["allowed: valid, test, seed"], id="unknown-split-key"),
    pytest.param(job(model=mlp_with(n_hidden={"int": [1, 2], "log": True})),
                 "model.hyperparameters.n_hidden.log",
                 ["unknown key 'log'", "allowed: int, float, choice, boolean, fixed, sampling"],
                 id="unknown-hyperparameter-key"),
    pytest.param(job(train={"epochs": 3, "early_stop": {"patience": 1}}), "train.early_stop",
                 ["allowed: epochs, batch_size, early_stopping"], id="unknown-train-key"),
    pytest.param(job(name=None), "name", ["is required"], id="missing-name"),
    pytest.param(job(model=None), "model", ["is required"], id="missing-model"),
    pytest.param(job(train={"early_stopping": {}}), "train.early_stopping.patience",
                 ["is required"], id="missing-patience"),
    pytest.param(job(search={"algorithm": "bayes"}), "search.algorithm",
                 ["'bayes' is not one of random, grid, bayesian, hyperband, asha, tpe, pbt"],
                 id="wrong-algorithm-literal"),
    pytest.param(job(resources={"strategy": "tpu"}), "resources.strategy",
                 ["'tpu' is not one of auto, mirrored, one_device, default"],
                 id="wrong-strategy-literal"),
    pytest.param(job(scheduler="slurm"), "scheduler", ["'slurm' is not one of native, ray"],
                 id="wrong-scheduler-literal"),
    pytest.param(job(model=mlp_with(n_hidden={"int": [3, 1]})), "model.hyperparameters.n_hidden",
                 ["min must be < max", "[3, 1]"], id="int-min-above-max"),
    pytest.param(job(model=mlp_with(learning_rate={"float": [0.01, 0.01]})),
                 "model.hyperparameters.learning_rate", ["min must be < max"],
                 id="float-min-equals-max"),
    pytest.param(job(model=mlp_with(learning_rate={"float": [0.0, 0.1], "sampling": "log"})),
                 "model.hyperparameters.learning_rate", ["log sampling needs min > 0"],
                 id="log-sampling-min-zero"),
    pytest.param(job(model=mlp_with(n_neurons={"int": [-4, 64], "sampling": "reverse_log"})),
                 "model.hyperparameters.n_neurons", ["reverse_log sampling needs min > 0"],
                 id="reverse-log-sampling-negative-min"),
    pytest.param(job(model=mlp_with(n_hidden={"int": [1, 2, 3]})), "model.hyperparameters.n_hidden",
                 ["int takes [min, max], got 3 values"], id="range-with-three-bounds"),
    pytest.param(job(model=mlp_with(n_hidden={"int": [1, 4], "step": 1.5})),
                 "model.hyperparameters.n_hidden", ["step of an int range must be a whole number"],
                 id="fractional-int-step"),
    pytest.param(job(model=mlp_with(optimizer={"choice": ["sgd", "adam"], "sampling": "log"})),
                 "model.hyperparameters.optimizer", ["apply to int/float ranges, not to choice"],
                 id="sampling-on-choice"),
    pytest.param(job(model=mlp_with(n_hidden={"int": [1, 3], "choice": [1, 2]})),
                 "model.hyperparameters.n_hidden",
                 ["give exactly one of int, float, choice, boolean, fixed", "(got int, choice)"],
                 id="two-hyperparameter-kinds"),
    pytest.param(job(model=mlp_with(optimizer={"choice": ["sgd", "adam"], "default": "rmsprop"})),
                 "model.hyperparameters.optimizer", ["default 'rmsprop' is not one of the choices"],
                 id="choice-default-not-a-choice"),
    pytest.param(job(model=mlp_with(n_neurons={"choice": [16, "32"]})),
                 "model.hyperparameters.n_neurons", ["choice values must share one type"],
                 id="mixed-type-choices"),
    pytest.param(job(model=mlp_with(n_neurons={"choice": [16, 16]})),
                 "model.hyperparameters.n_neurons", ["must be distinct"], id="duplicate-choices"),
    pytest.param(job(search={"objective": "accuracy"}), "search.objective",
                 ["'accuracy' is not a validation metric"], id="objective-not-val"),
    pytest.param(job(data={"dataset": "diabetes"},
                     model={"builtin": "mlp", "task": "regression"},
                     search={"objective": "val_accuracy"}),
                 "search.objective",
                 ["'val_accuracy' is not reported by the builtin regression model",
                  "allowed: val_loss, val_mae, val_mse, val_rmse"],
                 id="regression-with-val-accuracy"),
    pytest.param(job(search={"objective": "val_mystery"}), "search.objective",
                 ["cannot infer the direction of 'val_mystery'"],
                 id="unknown-metric-without-direction"),
    pytest.param(job(search={"objective": {"name": "val_loss", "direction": "up"}}),
                 "search.objective.direction", ["'up' is not one of min, max"],
                 id="bad-explicit-direction"),
    pytest.param(job(search={"objective": {"name": "val_loss", "goal": "min"}}),
                 "search.objective.goal", ["unknown key 'goal'", "allowed: name, direction"],
                 id="unknown-objective-key"),
    pytest.param(job(train={"steps_per_execution": 0}), "train.steps_per_execution",
                 ["0: input should be greater than or equal to 1"],
                 id="union-field-constraint"),
    pytest.param(job(search={"algorithm": "grid"},
                     model=mlp_with(learning_rate={"float": [0.001, 0.1]})),
                 "model.hyperparameters.learning_rate",
                 ["grid search needs a finite range"], id="grid-with-unstepped-float"),
    pytest.param(job(model=mlp_with(units={"int": [8, 64]})), "model.hyperparameters.units",
                 ["the builtin mlp has no hyperparameter 'units'", "allowed: n_hidden, n_neurons"],
                 id="unknown-builtin-hyperparameter"),
    pytest.param(job(model=mlp_with(optimizer={"choice": ["adam", "lbfgs"]})),
                 "model.hyperparameters.optimizer",
                 ["'lbfgs' is not allowed", "one of sgd, adam, rmsprop"],
                 id="bad-optimizer-choice"),
    pytest.param(job(model=mlp_with(optimizer={"fixed": "lbfgs"})),
                 "model.hyperparameters.optimizer", ["'lbfgs' is not allowed"],
                 id="bad-fixed-optimizer"),
    pytest.param(job(model=mlp_with(n_neurons={"int": [0, 64]})),
                 "model.hyperparameters.n_neurons", ["0 is not allowed: must be int >= 1"],
                 id="zero-neurons"),
    pytest.param(job(model=mlp_with(dropout={"float": [0.0, 1.0]})),
                 "model.hyperparameters.dropout", ["1.0 is not allowed: must be number in [0, 1)"],
                 id="dropout-of-one"),
    pytest.param(job(model={"builtin": "mlp", "task": "regression"}), "model.task",
                 ["'regression' does not fit dataset 'digits'", "classification set"],
                 id="task-not-fitting-dataset"),
    pytest.param(job(data={"dataset": "digits", "path": "data.csv"}), "data",
                 ["give exactly one of dataset, path, files", "(got dataset, path)"],
                 id="two-data-sources"),
    pytest.param(job(data={"split": {"valid": 0.1}}), "data",
                 ["give exactly one of dataset, path, files"], id="no-data-source"),
    pytest.param(job(data={"dataset": "imagenet"}), "data",
                 ["'imagenet' is not one of", "digits"], id="unknown-dataset"),
    pytest.param(job(data={"dataset": "digits", "target": "y"}), "data",
                 ["target applies to path/files"], id="target-with-named-dataset"),
    pytest.param(job(data={"dataset": "digits", "split": {"valid": 0.5, "test": 0.45}}),
                 "data.split", ["leaves too little for training"], id="split-too-big"),
    pytest.param(job(data={"dataset": "digits", "split": {"valid": 0}}), "data.split.valid",
                 ["0: input should be greater than 0"], id="split-zero"),
    pytest.param(job(search={"algorithm": "hyperband"}, train={"epochs": 1}), "train.epochs",
                 ["hyperband needs epochs >= 2", "got 1"], id="hyperband-one-epoch"),
    pytest.param(job(name="My Job"), "name", ["'My Job' must be 1-63 lowercase"],
                 id="bad-job-name"),
    pytest.param(job(name="-job"), "name", ["starting with a letter or digit"],
                 id="job-name-leading-dash"),
    pytest.param(job(train={"epochs": 0}), "train.epochs",
                 ["0: input should be greater than or equal to 1"], id="zero-epochs"),
    pytest.param(job(train={"batch_size": "big"}), "train.batch_size",
                 ["'big': input should be a valid integer"], id="non-integer-batch-size"),
    pytest.param(job(search={"max_trials": 0}), "search.max_trials",
                 ["greater than or equal to 1"], id="zero-max-trials"),
    pytest.param(job(model={"builtin": "mlp", "module": "m.py"}), "model",
                 ["give exactly one of builtin, module"], id="builtin-and-module"),
    pytest.param(job(model={"task": "classification"}), "model",
                 ["give exactly one of builtin, module"], id="neither-builtin-nor-module"),
    pytest.param(job(model={"module": "m.py", "source": CUSTOM_SOURCE, "input": "flatten"}),
                 "model", ["input applies to builtin models only"], id="input-on-custom-model"),
    pytest.param(job(model={"module": "m.py", "source": CUSTOM_SOURCE, "function": "build-it"}),
                 "model", ["'build-it' is not a Python identifier"], id="bad-function-name"),
    pytest.param(job(model=mlp_with(**{"bad name": {"int": [1, 2]}})), "model.hyperparameters",
                 ["'bad name' must be an identifier"], id="bad-hyperparameter-name"),
    pytest.param(job(search="fast"), "search", ["'fast'", "valid dictionary"],
                 id="section-not-a-mapping"),
    pytest.param(job(data={"path": "d.npz", "target": "y"}), "data",
                 ["target applies to csv/parquet files; an npz file holds its labels"],
                 id="target-with-npz"),
    pytest.param(job(model=mlp_with(n_hidden={"int": [1, 2], "default": 7})),
                 "model.hyperparameters.n_hidden", ["default 7 must be an int within [1, 2]"],
                 id="default-out-of-range"),
    pytest.param(job(model=mlp_with(n_hidden={"int": [1, 2], "default": "abc"})),
                 "model.hyperparameters.n_hidden", ["default 'abc' must be an int"],
                 id="default-not-a-number"),
    pytest.param(job(model=mlp_with(dropout={"float": [0.0, 0.5], "default": 0.9})),
                 "model.hyperparameters.dropout", ["default 0.9 must be a float within"],
                 id="float-default-out-of-range"),
]


@pytest.mark.parametrize(("raw", "path", "fragments"), BAD_SPECS)
def test_malformed_spec_is_one_line_naming_the_field(
    raw: dict[str, Any], path: str, fragments: list[str]
) -> None:
    assert_one_line(reject(raw), path, *fragments)


def test_at_least_fifteen_distinct_malformed_specs() -> None:
    assert len({p.id for p in BAD_SPECS}) >= 15


@pytest.mark.parametrize("key", ["da\nta", "a b", "x.y", ""])
def test_odd_unknown_key_is_quoted_in_the_path(key: str) -> None:
    error = reject(job(data={"dataset": "digits", key: 1}))
    assert_one_line(error, f"data.{key!r}", f"unknown key {key!r}", "allowed: dataset")


def test_odd_override_key_stays_on_one_line() -> None:
    with pytest.raises(SpecError) as info:
        apply_overrides(job(), ["name.x\n.y=1"])
    assert_one_line(info.value, "name.'x\\n'.y", "name is a string, not a section")


def test_first_error_is_reported_with_a_count_of_the_rest() -> None:
    error = reject(job(train={"epochs": 0, "batch_size": 0}))
    assert_one_line(error, "train.epochs", "(and 1 more error)")


def test_spec_error_is_a_value_error() -> None:
    assert isinstance(reject(job(bogus=1)), ValueError)


def test_raw_job_must_be_a_mapping() -> None:
    with pytest.raises(SpecError, match="a job is a mapping of sections, got list"):
        parse_spec([1, 2])  # type: ignore[arg-type]


# --- YAML files -----------------------------------------------------------------------


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: x\ndata: [unclosed\nmodel: {}\n")
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    text = str(info.value)
    assert "\n" not in text
    assert str(path) in text and re.search(r"line \d+, column \d+", text)


def test_yaml_that_is_not_a_mapping() -> None:
    with pytest.raises(SpecError, match="a job file is a mapping of sections, got list"):
        parse_yaml("- a\n- b\n", "job.yaml")
    with pytest.raises(SpecError, match="got empty document"):
        parse_yaml("", "job.yaml")


def test_missing_job_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read job file"):
        load_spec_file(tmp_path / "nope.yaml")


def test_missing_model_module(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ndata: {dataset: digits}\nmodel: {module: missing.py}\n")
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    assert_one_line(info.value, "model.module", "cannot read 'missing.py'")


def test_model_module_is_read_relative_to_the_job_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.py").write_text(CUSTOM_SOURCE)
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ndata: {dataset: digits}\nmodel: {module: sub/m.py}\n")
    assert load_spec_file(path).model.source == CUSTOM_SOURCE


def test_non_utf8_model_module(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_bytes(b"\xff\xfe\x00bad")
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ndata: {dataset: digits}\nmodel: {module: m.py}\n")
    with pytest.raises(SpecError, match="model.module: 'm.py' is not UTF-8 text"):
        load_spec_file(path)


def test_malformed_yaml_file_reports_like_a_dict(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ndata: {dataset: digits}\nmodel: {builtin: mlp}\n"
                    "search: {algorithm: bayes}\n")
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    assert_one_line(info.value, "search.algorithm", "'bayes' is not one of")


# --- --set overrides ---------------------------------------------------------------------


def test_overrides_change_values_with_yaml_types() -> None:
    spec = load_spec_file(EXAMPLES / "digits.yaml", [
        "train.epochs=3",
        "search.algorithm=grid",
        "model.hyperparameters.learning_rate.step=0.001",
        "train.jit_compile=true",
        "name=digits-2",
    ])
    assert spec.train.epochs == 3
    assert spec.search.algorithm == "grid"
    assert spec.model.hyperparameters["learning_rate"].step == 0.001
    assert spec.train.jit_compile is True
    assert spec.name == "digits-2"


def test_override_may_create_a_section_and_take_a_list() -> None:
    raw = apply_overrides({"name": "j"}, ["model.hyperparameters.n_hidden.int=[1, 4]"])
    assert raw["model"] == {"hyperparameters": {"n_hidden": {"int": [1, 4]}}}


def test_overrides_do_not_mutate_their_input() -> None:
    raw = job()
    apply_overrides(raw, ["data.dataset=wine"])
    assert raw["data"]["dataset"] == "digits"


@pytest.mark.parametrize(
    ("override", "path", "fragment"),
    [
        ("train.epochs=abc", "train.epochs", "'abc': input should be a valid integer"),
        ("train.epochs=0", "train.epochs", "greater than or equal to 1"),
        ("search.algorithm=bayes", "search.algorithm", "'bayes' is not one of"),
        ("search.objective=accuracy", "search.objective", "not a validation metric"),
        ("train.epochs=1", "train.epochs", None),  # fine for random search: no error
        ("search.algorithm=grid", "model.hyperparameters.learning_rate",
         "grid search needs a finite range"),
        ("model.task=regression", "model.task", "does not fit dataset 'digits'"),
        ("model.hyperparameters.n_neurons.sampling=cubic",
         "model.hyperparameters.n_neurons.sampling", "'cubic' is not one of linear, log"),
        ("train.patience=3", "train.patience", "unknown key 'patience'"),
        ("name=Digits MLP", "name", "must be 1-63 lowercase"),
    ],
)
def test_overrides_are_validated_like_the_file(
    override: str, path: str, fragment: str | None
) -> None:
    if fragment is None:
        assert load_spec_file(EXAMPLES / "digits.yaml", [override]).train.epochs == 1
        return
    with pytest.raises(SpecError) as info:
        load_spec_file(EXAMPLES / "digits.yaml", [override])
    assert_one_line(info.value, path, fragment)


@pytest.mark.parametrize("override", ["noequals", "=3", "train..epochs=3", "train.=3"])
def test_malformed_override(override: str) -> None:
    with pytest.raises(SpecError) as info:
        apply_overrides(job(), [override])
    assert_one_line(info.value, "--set", "is not of the form dotted.path=value")


def test_override_into_a_scalar_is_refused() -> None:
    with pytest.raises(SpecError) as info:
        apply_overrides(job(), ["name.first=x"])
    assert_one_line(info.value, "name.first", "name is a string, not a section")


def test_override_with_unparsable_value() -> None:
    with pytest.raises(SpecError) as info:
        apply_overrides(job(), ["train.epochs=[1, 2"])
    assert_one_line(info.value, "train.epochs", "cannot parse override value")


# --- objective direction ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("val_accuracy", "max"),
        ("accuracy", "max"),
        ("val_sparse_categorical_accuracy", "max"),
        ("val_auc", "max"),
        ("val_precision", "max"),
        ("val_loss", "min"),
        ("val_mae", "min"),
        ("val_mse", "min"),
        ("val_rmse", "min"),
        ("val_mean_absolute_error", "min"),
        ("val_binary_crossentropy", "min"),
        ("val_foo", None),
    ],
)
def test_infer_direction(name: str, direction: str | None) -> None:
    assert infer_direction(name) == direction


@pytest.mark.parametrize(
    ("objective", "direction"),
    [("val_accuracy", "max"), ("val_loss", "min"),
     ({"name": "val_accuracy"}, "max"), ({"name": "val_loss", "direction": "max"}, "max"),
     ({"name": "val_accuracy", "direction": "min"}, "min")],
)
def test_spec_direction_inferred_or_explicit(objective: Any, direction: str) -> None:
    spec = parse_spec(job(search={"objective": objective}))
    assert spec.search.direction == direction


@pytest.mark.parametrize(
    ("task", "dataset", "objective", "direction"),
    [("regression", "diabetes", "val_mae", "min"), ("regression", "diabetes", "val_rmse", "min"),
     ("classification", "iris", "val_accuracy", "max")],
)
def test_builtin_objectives(task: str, dataset: str, objective: str, direction: str) -> None:
    spec = parse_spec(job(data={"dataset": dataset}, model={"builtin": "mlp", "task": task},
                          search={"objective": objective}))
    assert spec.search.direction == direction


def test_unknown_metric_for_custom_model_needs_a_direction() -> None:
    error = reject(job(model={"module": "m.py", "source": CUSTOM_SOURCE},
                       search={"objective": "val_my_score"}))
    assert_one_line(error, "search.objective", "cannot infer the direction", "direction: min|max")


# --- train.jit_compile (issue 13, goal 5) ---------------------------------------------


def test_jit_compile_defaults_to_auto_and_takes_auto_true_false() -> None:
    base = {"name": "j", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"}}
    assert parse_spec(base).train.jit_compile == "auto"
    for value in ("auto", True, False):
        assert parse_spec({**base, "train": {"jit_compile": value}}).train.jit_compile == value


@pytest.mark.parametrize("value", ["yes", "on", 1, 0, None, "AUTO", [True]])
def test_jit_compile_rejects_anything_else_in_one_line(value: Any) -> None:
    base = {"name": "j", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"}}
    with pytest.raises(SpecError) as info:
        parse_spec({**base, "train": {"jit_compile": value}})
    assert str(info.value) == f"train.jit_compile: {value!r} is not one of auto, true, false"


def test_yaml_exponents_are_numbers_and_mixed_numeric_choices_are_floats() -> None:
    """YAML 1.1 reads 1e-3 (no dot) as text; users write learning rates that way."""
    raw = parse_yaml("""
name: lr
data: {dataset: digits}
model:
  builtin: mlp
  hyperparameters:
    learning_rate: {choice: [1e-3, 1e-2]}
    dropout: {choice: [0, 0.2, 0.5], default: 0}
    n_hidden: {fixed: 2}
""")
    spec = parse_spec(apply_overrides(raw, ["train.epochs=2", "search.seed=1E1"]))
    hps = spec.model.hyperparameters
    assert hps["learning_rate"].choice == [0.001, 0.01]
    assert hps["dropout"].choice == [0.0, 0.2, 0.5] and hps["dropout"].default == 0.0
    assert spec.search.seed == 10


@pytest.mark.parametrize(("section", "value", "path", "allowed"), [
    ("data", {"files": {"train": "a.csv", "valid": "b.csv", "tset": "c.csv"}, "target": "y"},
     "data.files.tset", "train, valid, test"),
    ("search", {"objective": {"nmae": "val_loss"}}, "search.objective.nmae", "name, direction"),
    ("warm_start", {"form": "x"}, "warm_start.form", "from"),
])
def test_a_misspelt_required_key_is_named_not_reported_missing(
        section: str, value: dict[str, Any], path: str, allowed: str) -> None:
    assert_one_line(reject(job(**{section: value})), path,
                    f"unknown key {path.rsplit('.', 1)[1]!r}; allowed: {allowed}")


# --- train.deterministic (newcomer's first hour, point 8) -----------------------------


def test_deterministic_defaults_to_false_and_takes_a_boolean() -> None:
    base = {"name": "j", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"}}
    assert parse_spec(base).train.deterministic is False
    for value in (True, False):
        assert parse_spec({**base, "train": {"deterministic": value}}).train.deterministic is value


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, None, [True]])
def test_deterministic_rejects_a_non_boolean_in_one_line(value: Any) -> None:
    base = {"name": "j", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"}}
    with pytest.raises(SpecError) as info:
        parse_spec({**base, "train": {"deterministic": value}})
    assert str(info.value) == f"train.deterministic: {value!r} is not one of true, false"
