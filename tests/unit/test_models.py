"""Models: the builtin MLPs (real fits on embedded data), adapt-on-train-only, user code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import numpy as np
import pytest

from tunecluster.data import Splits, load_splits
from tunecluster.errors import TrialFailed
from tunecluster.models import (
    ModelCodeError,
    adapt_normalization,
    build_checked,
    build_mlp,
    load_build_function,
)
from tunecluster.models.builtin import make_optimizer
from tunecluster.spec import load_spec_file, parse_spec
from tunecluster.spec.models import OPTIMIZERS, Data, JobSpec
from tunecluster.spec.space import build_space, space_to_json
from tunecluster.worker.runtime import JobRuntime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_splits(Data(dataset="digits"))


@pytest.fixture(scope="module")
def diabetes() -> Splits:
    return load_splits(Data(dataset="diabetes"))


def prepare(job_id: str, spec: JobSpec, root: Path, **kw: Any) -> JobRuntime:
    """The runtime a worker builds for a job: the space as the chief sends it."""
    space = space_to_json(build_space(spec.model.hyperparameters))
    return JobRuntime.prepare(job_id, spec, space, root, **kw)


def mlp_for(splits: Splits, values: dict[str, Any], input_mode: str, **kw: Any) -> Any:
    return build_mlp(values, input_shape=splits.input_shape, task=splits.task,
                     input_mode=input_mode, label_kind=splits.label_kind,
                     num_classes=splits.num_classes, **kw)


# --- builtin: real training ---------------------------------------------------------------


def test_digits_classifier_learns(digits: Splits) -> None:
    keras.utils.set_random_seed(0)
    model = mlp_for(digits, {"n_hidden": 1, "n_neurons": 32, "learning_rate": 0.01}, "flatten")
    history = model.fit(digits.x_train, digits.y_train, epochs=2, batch_size=32, verbose=0,
                        validation_data=(digits.x_valid, digits.y_valid))
    assert history.history["val_accuracy"][-1] > 0.3  # chance is 0.1


def test_diabetes_regression_learns(diabetes: Splits) -> None:
    keras.utils.set_random_seed(0)
    stats = adapt_normalization(diabetes.x_train)
    model = mlp_for(diabetes, {"n_hidden": 1, "n_neurons": 32, "learning_rate": 0.05},
                    "normalize", normalization=stats)
    untrained = model.evaluate(diabetes.x_valid, diabetes.y_valid, verbose=0, return_dict=True)
    history = model.fit(diabetes.x_train, diabetes.y_train, epochs=3, batch_size=32, verbose=0,
                        validation_data=(diabetes.x_valid, diabetes.y_valid))
    assert set(untrained) >= {"loss", "mae", "mse", "rmse"}
    assert history.history["val_loss"][-1] < 0.5 * untrained["loss"]


# --- builtin: structure and loss ------------------------------------------------------------


@pytest.mark.parametrize(("task", "label_kind", "loss"), [
    ("classification", "sparse", "sparse_categorical_crossentropy"),
    ("classification", "onehot", "categorical_crossentropy"),
    ("regression", "regression", "mse"),
])
def test_loss_follows_the_labels(task: str, label_kind: str, loss: str) -> None:
    stats = adapt_normalization(np.random.default_rng(0).normal(size=(20, 4)).astype("float32"))
    model = build_mlp({}, input_shape=(4,), task=task,
                      input_mode="flatten" if task == "classification" else "normalize",
                      label_kind=label_kind, num_classes=3, normalization=stats)
    assert model.loss == loss
    assert model.compiled
    output = model.get_layer("output")
    assert output.units == (3 if task == "classification" else 1)
    assert output.dtype_policy.compute_dtype == "float32"


def test_runtime_picks_the_loss_from_the_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(60) % 3]
    np.savez(tmp_path / "onehot.npz", x=x, y=y)
    spec = parse_spec({"name": "oh", "data": {"path": str(tmp_path / "onehot.npz")},
                       "model": {"builtin": "mlp", "task": "classification"}})
    rt = prepare("oh", spec, tmp_path)
    assert rt.splits.label_kind == "onehot"
    assert rt.build_model({}).loss == "categorical_crossentropy"


def test_hyperparameter_values_shape_the_model() -> None:
    model = build_mlp({"n_hidden": 3, "n_neurons": 7, "dropout": 0.25, "activation": "tanh",
                       "optimizer": "sgd", "learning_rate": 0.02},
                      input_shape=(8, 8), task="classification", input_mode="flatten",
                      label_kind="sparse", num_classes=10)
    hidden = [layer for layer in model.layers if layer.name.startswith("hidden_")]
    assert [layer.units for layer in hidden] == [7, 7, 7]
    assert all(layer.activation.__name__ == "tanh" for layer in hidden)
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 3
    assert isinstance(model.layers[0], keras.layers.Flatten)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.02)


def test_defaults_apply_and_tuner_values_are_ignored_by_runtime(tmp_path: Path) -> None:
    spec = parse_spec({"name": "d", "data": {"dataset": "iris"}, "model": {"builtin": "mlp"}})
    rt = prepare("d", spec, tmp_path)
    model = rt.build_model({"tuner/epochs": 4, "tuner/round": 1})
    hidden = [layer for layer in model.layers if layer.name.startswith("hidden_")]
    assert [layer.units for layer in hidden] == [64, 64]  # DEFAULTS: 2 x 64
    assert isinstance(model.optimizer, keras.optimizers.Adam)


def test_zero_hidden_layers() -> None:
    model = build_mlp({"n_hidden": 0}, input_shape=(5,), task="classification",
                      input_mode="flatten", label_kind="sparse", num_classes=2)
    assert [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [
        "output"]


def test_normalize_without_statistics_is_refused() -> None:
    with pytest.raises(ValueError, match="needs the Normalization statistics"):
        build_mlp({}, input_shape=(4,), task="regression", input_mode="normalize",
                  label_kind="regression", num_classes=0)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_allowed_optimizer_exists(name: str) -> None:
    optimizer = make_optimizer(name, 0.003)
    assert isinstance(optimizer, keras.optimizers.Optimizer)
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.003)


# --- adapt() sees the training split only -----------------------------------------------------


def test_adapt_statistics_are_those_of_the_data() -> None:
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(500, 4)).astype("float32")
    stats = adapt_normalization(x)
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats.variance, x.var(axis=0), rtol=1e-3)


def test_normalization_adapts_on_train_split_only_with_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parts = {
        "train": rng.normal(0.0, 1.0, size=(80, 3)),
        "valid": rng.normal(100.0, 5.0, size=(30, 3)),   # far away: adapt must not see these
        "test": rng.normal(-50.0, 9.0, size=(30, 3)),
    }
    for name, x in parts.items():
        np.savez(tmp_path / f"{name}.npz", x=x.astype("float32"),
                 y=(x.sum(axis=1) + rng.normal(size=len(x))).astype("float32"))
    spec = parse_spec({
        "name": "adapt-files",
        "data": {"files": {k: f"{k}.npz" for k in parts}},
        "model": {"builtin": "mlp", "task": "regression", "input": "normalize"},
    })
    rt = prepare("adapt-files", spec, tmp_path,
                            resolve=lambda p: str(tmp_path / p))
    model = rt.build_model({"n_hidden": 1, "n_neurons": 4})
    layer = model.get_layer("normalization")
    x_train = rt.splits.x_train
    np.testing.assert_allclose(np.asarray(layer.mean).ravel(), x_train.mean(axis=0),
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(layer.variance).ravel(), x_train.var(axis=0),
                               rtol=1e-3)
    assert np.all(np.abs(np.asarray(layer.mean)) < 1.0)  # nowhere near valid's 100 / test's -50


def test_normalization_adapts_on_train_split_only_with_a_random_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 200
    # one column is the row id, so any row of valid/test in adapt() moves its mean
    x = np.column_stack([np.arange(n) ** 2, rng.normal(size=n)]).astype("float32")
    np.savez(tmp_path / "d.npz", x=x, y=rng.normal(size=n).astype("float32"))
    spec = parse_spec({"name": "adapt-split", "data": {"path": str(tmp_path / "d.npz")},
                       "model": {"builtin": "mlp", "task": "regression"}})
    rt = prepare("adapt-split", spec, tmp_path)
    mean = np.asarray(rt.build_model({}).get_layer("normalization").mean).ravel()
    np.testing.assert_allclose(mean, rt.splits.x_train.mean(axis=0), rtol=1e-5)
    assert abs(mean[0] - x[:, 0].mean()) > 10  # the full data's mean is not what was used


def test_flatten_input_does_not_adapt(tmp_path: Path) -> None:
    spec = parse_spec({"name": "nd", "data": {"dataset": "iris"}, "model": {"builtin": "mlp"}})
    rt = prepare("nd", spec, tmp_path)
    assert rt.normalization is None
    assert not any(isinstance(layer, keras.layers.Normalization)
                   for layer in rt.build_model({}).layers)


# --- user code ---------------------------------------------------------------------------------

GOOD = '''
import keras

def build_model(hp):
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(hp.Int("units", 2, 8, default=5)),
                              keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model
'''


def test_load_and_build_user_model() -> None:
    build = load_build_function(GOOD, "build_model", "good.py")
    model = build_checked(build, keras_tuner.HyperParameters())
    assert isinstance(model, keras.Model) and model.compiled
    assert model.layers[0].units == 5


def test_example_custom_model_through_the_runtime(tmp_path: Path) -> None:
    spec = load_spec_file(EXAMPLES / "custom.yaml")
    rt = prepare("custom", spec, tmp_path)
    model = rt.build_model({"num_layers": 2, "units_0": 32, "units_1": 16, "dropout": True,
                            "lr": 0.005})
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [32, 16, 10]
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.005)


def test_model_code_error_is_a_trial_failure() -> None:
    assert issubclass(ModelCodeError, TrialFailed)


@pytest.mark.parametrize(("source", "fragment"), [
    ("import no_such_module_for_tunecluster_tests\n",
     "ModuleNotFoundError: No module named 'no_such_module_for_tunecluster_tests'"),
    ("def build_model(hp)\n    return 1\n", "SyntaxError"),
    ("raise RuntimeError('boom\\nsecond line')\n", "second line"),
    ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
])
def test_failing_import(source: str, fragment: str) -> None:
    before = set(sys.modules)
    with pytest.raises(ModelCodeError) as info:
        load_build_function(source, "build_model", "user_model.py")
    text = str(info.value)
    assert text.startswith("user_model.py failed to import: ")
    assert fragment in text and "\n" not in text
    assert info.value.__cause__ is not None  # the traceback is kept
    assert not {m for m in set(sys.modules) - before if m.startswith("tunecluster_user_")}


def test_function_missing() -> None:
    with pytest.raises(ModelCodeError, match="m.py defines no function 'build_model'"):
        load_build_function("def make(hp):\n    pass\n", "build_model", "m.py")
    with pytest.raises(ModelCodeError, match="defines no function 'build_model'"):
        load_build_function("build_model = 3\n", "build_model", "m.py")


def test_other_function_name() -> None:
    build = load_build_function(GOOD.replace("def build_model", "def make"), "make")
    assert callable(build)


@pytest.mark.parametrize(("body", "fragment"), [
    ("return {'not': 'a model'}", "must return a compiled keras.Model, got dict"),
    ("return None", "got NoneType"),
    ("return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])",
     "returned a model that is not compiled; call model.compile()"),
    ("raise ValueError('bad units')", "build_model(hp) raised ValueError: bad units"),
])
def test_build_checked_rejects(body: str, fragment: str) -> None:
    build = load_build_function(f"import keras\n\ndef build_model(hp):\n    {body}\n",
                                "build_model")
    with pytest.raises(ModelCodeError) as info:
        build_checked(build, keras_tuner.HyperParameters())
    assert fragment in str(info.value)
    assert isinstance(info.value, TrialFailed)


WITH_DATA = '''
import keras

SEEN = {}


def build_model(hp, data):
    SEEN["data"] = data
    norm = keras.layers.Normalization()
    norm.adapt(data.x_train)
    model = keras.Sequential([keras.Input(shape=data.x_train.shape[1:]), norm,
                              keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model
'''


def test_build_model_hp_data_gets_the_runtimes_training_split_read_only(tmp_path) -> None:
    """``build_model(hp, data)`` (issue 30): the worker's runtime passes the arrays the
    trial fits on, read-only, without the test split; the one-parameter form is
    called as before (test_example_custom_model_through_the_runtime)."""
    spec = parse_spec({"name": "d", "data": {"dataset": "diabetes"},
                       "model": {"module": "m.py", "function": "build_model",
                                 "source": WITH_DATA, "task": "regression"},
                       "search": {"objective": {"name": "val_loss", "direction": "min"}}})
    rt = prepare("d", spec, tmp_path)
    model = rt.build_model({})
    data = rt.build_fn.__globals__["SEEN"]["data"]
    assert data.x_train is not rt.splits.x_train and np.shares_memory(data.x_train,
                                                                      rt.splits.x_train)
    assert not data.x_train.flags.writeable and not data.y_valid.flags.writeable
    assert not hasattr(data, "x_test") and data.task == "regression"
    np.testing.assert_allclose(np.asarray(model.layers[0].mean).reshape(-1),
                               rt.splits.x_train.mean(axis=0), rtol=1e-4)
    with pytest.raises(ModelCodeError, match=r"build_model\(hp, data\): this caller has no"):
        build_checked(rt.build_fn, keras_tuner.HyperParameters())
