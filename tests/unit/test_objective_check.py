"""A wrong objective name is refused at submit, in one line naming the ones that work,
before anything is queued: custom models (the model build_model compiles), the
drop-in's objective, and builtin models (static names, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from tunecluster.errors import SpecError
from tunecluster.spec import parse_spec

keras = pytest.importorskip("keras")
kt = pytest.importorskip("tunecluster.keras_tuner")

from tunecluster.models.objective_check import check_objective, reported_names  # noqa: E402


def _model(metrics: list) -> object:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", metrics=metrics)
    return model


def test_the_names_keras_logs_strings_as_given_objects_by_name() -> None:
    names = reported_names(_model(["RootMeanSquaredError", keras.metrics.MeanAbsoluteError(
        name="mae_x"), keras.losses.mean_squared_error]))
    assert names == ["val_loss", "val_RootMeanSquaredError", "val_mae_x",
                     "val_mean_squared_error"]


def test_the_courses_objective_is_refused_naming_the_good_ones() -> None:
    model = _model(["RootMeanSquaredError"])
    with pytest.raises(SpecError) as info:
        check_objective(model, "val_root_mean_squared_error")
    text = str(info.value)
    assert "\n" not in text and text.startswith("search.objective: ")
    assert "'val_root_mean_squared_error'" in text
    assert "val_loss, val_RootMeanSquaredError" in text
    check_objective(model, "val_RootMeanSquaredError")
    check_objective(model, "val_loss")


def test_a_model_logging_names_of_its_own_is_not_checked() -> None:
    class Own(keras.Model):
        def test_step(self, data):  # may log anything
            return super().test_step(data)

    inputs = keras.Input((3,))
    model = Own(inputs, keras.layers.Dense(1)(inputs))
    model.compile(loss="mse")
    assert reported_names(model) is None
    check_objective(model, "val_whatever_it_logs")


def build_rmse(hp):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(hp.Int("u", 2, 4)),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", metrics=["RootMeanSquaredError"])
    return model


def test_the_drop_ins_objective_is_refused_before_a_cluster_is_asked() -> None:
    x = np.random.default_rng(0).normal(size=(20, 2)).astype("float32")
    y = x.sum(axis=1)
    tuner = kt.RandomSearch(build_rmse, objective="val_root_mean_squared_error",
                            max_trials=2, cluster="redis://127.0.0.1:1/0")
    with pytest.raises(SpecError, match="it reports: val_loss, val_RootMeanSquaredError"):
        tuner.search(x, y, validation_split=0.25, epochs=1, verbose=0)  # Redis unreachable


def test_builtin_objectives_are_checked_statically() -> None:
    spec = {"name": "b", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"},
            "search": {"objective": "val_root_mean_squared_error"}}
    with pytest.raises(SpecError, match="allowed: val_loss, val_accuracy"):
        parse_spec(spec)
