"""A trial's model on disk and back (models/saved.py): whole where Keras can serialize it,
else its weights; rebuilt by the hypermodel with the trial's values, as KerasTuner does."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tunecluster.models import ModelCodeError
from tunecluster.models.saved import load_model, save_model, weights_only

X = np.random.default_rng(0).normal(size=(12, 4)).astype("float32")


def build_subclass(hp):
    class Net(keras.Model):  # defined inside build_model: Keras cannot serialize it
        def __init__(self, units):
            super().__init__()
            self.hidden = keras.layers.Dense(units, activation="relu")
            self.out = keras.layers.Dense(3, activation="softmax")

        def call(self, x):
            return self.out(self.hidden(x))

    model = Net(hp.Int("units", 4, 8))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def build_lambda(hp):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2.0),
                              keras.layers.Dense(hp.Int("units", 4, 8)),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def trained(build, units: int) -> keras.Model:
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    hp.values["units"] = units
    model = build(hp)
    model.fit(X, np.arange(12) % 3, epochs=1, verbose=0)
    return model


def test_a_model_keras_cannot_serialize_keeps_its_weights(tmp_path: Path) -> None:
    model = trained(build_subclass, 7)
    path = tmp_path / "model.keras"
    assert save_model(model, path, example=X[:1]) is False
    assert weights_only(path)["class"] == "Net"
    with pytest.raises(ModelCodeError, match="holds the weights of a Net") as info:
        load_model(path)
    assert "\n" not in str(info.value)
    back = load_model(path, build=build_subclass, values={"units": 7})
    assert np.allclose(back.predict(X, verbose=0), model.predict(X, verbose=0))


def test_a_lambda_model_is_whole_and_comes_back_rebuilt(tmp_path: Path) -> None:
    model = trained(build_lambda, 5)
    path = tmp_path / "model.keras"
    assert save_model(model, path) is True and weights_only(path) is None
    with pytest.raises(ValueError, match="Lambda"):
        load_model(path)  # Keras refuses to deserialize a Python lambda
    back = load_model(path, build=build_lambda, values={"units": 5})
    assert back.layers[1].units == 5
    assert np.allclose(back.predict(X, verbose=0), model.predict(X, verbose=0))
