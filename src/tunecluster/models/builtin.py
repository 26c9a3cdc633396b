"""The course's models, built from hyperparameter values.

- classifier: ``Flatten`` (image-like input) -> ``n_hidden`` x ``Dense(n_neurons, relu)``
  -> ``Dense(classes, softmax)``;
- regression: ``Normalization`` adapted on the **training split only** -> hidden layers
  -> ``Dense(1)``.

The loss follows the labels: sparse / categorical crossentropy, or mse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Values used for a hyperparameter the job neither searches nor fixes.
DEFAULTS: dict[str, Any] = {
    "n_hidden": 2,
    "n_neurons": 64,
    "learning_rate": 1e-3,
    "optimizer": "adam",
    "activation": "relu",
    "dropout": 0.0,
}


@dataclass(frozen=True)
class NormalizationStats:
    """Mean and variance learnt by ``Normalization.adapt()`` on the training split."""

    mean: np.ndarray
    variance: np.ndarray


def adapt_normalization(x_train: np.ndarray) -> NormalizationStats:
    """Run the real ``Normalization.adapt`` once per job; trials reuse its statistics."""
    import keras

    layer = keras.layers.Normalization(axis=-1)
    layer.adapt(x_train.reshape(len(x_train), -1))
    return NormalizationStats(
        np.asarray(layer.mean).reshape(-1), np.asarray(layer.variance).reshape(-1)
    )


def build_mlp(
    values: Mapping[str, Any],
    *,
    input_shape: tuple[int, ...],
    task: str,
    input_mode: str,
    label_kind: str,
    num_classes: int,
    normalization: NormalizationStats | None = None,
) -> Any:
    """A compiled ``keras.Sequential`` MLP for these hyperparameter values."""
    import keras

    hp = {**DEFAULTS, **values}
    model = keras.Sequential(name="mlp")
    model.add(keras.Input(shape=input_shape))
    if len(input_shape) > 1 or input_mode == "flatten":
        model.add(keras.layers.Flatten())
    if input_mode == "normalize":
        if normalization is None:
            raise ValueError("input: normalize needs the Normalization statistics"
                             " of the training split")
        model.add(keras.layers.Normalization(
            mean=normalization.mean, variance=normalization.variance, name="normalization"))
    for i in range(int(hp["n_hidden"])):
        model.add(keras.layers.Dense(int(hp["n_neurons"]), activation=hp["activation"],
                                     name=f"hidden_{i}"))
        if float(hp["dropout"]) > 0:
            model.add(keras.layers.Dropout(float(hp["dropout"])))
    # The output layer stays float32 under mixed precision: softmax and mse in half
    # precision lose too much.
    if task == "classification":
        model.add(keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                     name="output"))
        loss = ("categorical_crossentropy" if label_kind == "onehot"
                else "sparse_categorical_crossentropy")
        metrics: list[Any] = ["accuracy"]
    else:
        model.add(keras.layers.Dense(1, dtype="float32", name="output"))
        loss = "mse"
        metrics = [
            keras.metrics.MeanAbsoluteError(name="mae"),
            keras.metrics.MeanSquaredError(name="mse"),
            keras.metrics.RootMeanSquaredError(name="rmse"),
        ]
    model.compile(loss=loss, optimizer=make_optimizer(hp["optimizer"], float(hp["learning_rate"])),
                  metrics=metrics)
    return model


def make_optimizer(name: str, learning_rate: float) -> Any:
    import keras

    classes = {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
        "adamw": keras.optimizers.AdamW,
        "adagrad": keras.optimizers.Adagrad,
        "nadam": keras.optimizers.Nadam,
    }
    return classes[name](learning_rate=learning_rate)
