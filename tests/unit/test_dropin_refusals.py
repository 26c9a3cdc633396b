"""The drop-in's one-line refusals (README, "Not yet, each refused in one line"): several
inputs, a ``tf.data`` dataset of other elements, and data past the 64 MiB that travel
with a job (numpy arrays or a ``tf.data`` dataset), each refused by the real tuner's
``search()`` in the user's process, before any cluster is asked.

The tuner's cluster is an address where nothing listens: a search that got past its
checks would fail reaching it (``test_valid_inputs_reach_the_cluster`` shows that it
does), so a ``SpecError`` is the refusal, not a lost connection."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tunecluster.keras_tuner as kt
from tunecluster import defaults
from tunecluster.errors import SpecError

NO_REDIS = "redis://127.0.0.1:1/0"
LIMIT = 64 * 2**20  # the README's figure


def build_model(hp):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(hp.Int("units", 2, 4)),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture
def tuner(tmp_path: Path) -> kt.RandomSearch:
    return kt.RandomSearch(build_model, objective="val_accuracy", max_trials=1,
                           cluster=NO_REDIS, directory=tmp_path, project_name="refusals")


def refused(tuner: kt.RandomSearch, x: object, y: object = None, **kwargs: object) -> str:
    """``search()``'s refusal: a ``SpecError`` of one line."""
    with pytest.raises(SpecError) as info:
        tuner.search(x, y, epochs=1, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def small(rows: int = 40) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((rows, 4), "float32"), np.arange(rows) % 2


def test_the_upload_limit_is_the_documented_64_mib() -> None:
    assert defaults.MAX_UPLOAD_BYTES == LIMIT


def test_valid_inputs_reach_the_cluster(tuner: kt.RandomSearch) -> None:
    """The control: the same search with one input array passes every check and fails
    only where the cluster is asked (nothing listens there)."""
    x, y = small()
    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever reaching Redis raises
        tuner.search(x, y, validation_data=(x, y), epochs=1)
    assert not isinstance(info.value, SpecError), info.value


def test_several_inputs_are_refused(tuner: kt.RandomSearch) -> None:
    x, y = small()
    for several in ([x, x], (x, x)):
        message = refused(tuner, several, y, validation_data=(x, y))
        assert message == "x: one array only: models with several inputs are not supported"
    assert refused(tuner, {"a": x, "b": x}, y, validation_data=(x, y)) == (
        "x: a numpy array, a pandas object or a tf.data dataset of (x, y) batches, got dict")
    message = refused(tuner, x, y, validation_data=([x, x], y))
    assert message.startswith("validation_data[0]: one array only"), message


def test_arrays_over_the_upload_limit_are_refused(tuner: kt.RandomSearch) -> None:
    rows = LIMIT // (4 * 4) + 1024  # float32, 4 columns: just past 64 MiB with y
    x, y = np.zeros((rows, 4), "float32"), np.zeros(rows, "int8")
    vx, vy = small()
    message = refused(tuner, x, y, validation_data=(vx, vy))
    assert re.match(r"x: the arrays are 6[4-9] MiB, over the 64 MiB that travel with a job;",
                    message), message
    assert "data.files" in message  # what to do instead
    # just under the limit, the same search goes on to the cluster
    under = LIMIT // (4 * 4 + 1) - 1024  # 16 bytes of x and one of y a row
    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever reaching Redis raises
        tuner.search(x[:under], y[:under], validation_data=(vx, vy), epochs=1)
    assert not isinstance(info.value, SpecError), info.value


def test_a_dataset_over_the_upload_limit_is_refused(tuner: kt.RandomSearch) -> None:
    rows = LIMIT // (4 * 4) + 4096
    big = tf.data.Dataset.from_tensor_slices(
        (np.zeros((rows, 4), "float32"), np.zeros(rows, "int8"))).batch(8192)
    message = refused(tuner, big, validation_data=small())
    assert message.startswith("x: the dataset is over the 64 MiB that travel with a job"), \
        message
    assert "data.files" in message


def test_a_dataset_of_other_elements_is_refused(tuner: kt.RandomSearch) -> None:
    x, y = small()
    inputs = tf.data.Dataset.from_tensor_slices(({"a": x, "b": x}, y)).batch(8)
    message = refused(tuner, inputs, validation_data=(x, y))
    assert message.startswith("x: a dataset of (x, y) batches of single tensors travels"), \
        message
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    assert refused(tuner, endless, validation_data=(x, y)).startswith(
        "x: an endless dataset (repeat()) cannot travel")


def build_none(hp):
    hp.Int("units", 2, 4)


def build_text(hp):
    hp.Int("units", 2, 4)
    return "a model"


def build_layer(hp):
    hp.Int("units", 2, 4)
    return keras.layers.Dense(2)


@pytest.mark.parametrize(("build", "returned"), [
    (build_none, "NoneType"), (build_text, "str"), (build_layer, "Dense")])
def test_a_build_that_returns_no_model_raises_keras_tuners_fatal_type_error(
        tmp_path: Path, build: object, returned: str) -> None:
    """KerasTuner stops the search with its ``FatalTypeError`` when ``build`` returns
    something other than a Keras model; the drop-in raises that type too (and it stays
    a one-line ``SpecError`` for those who catch ours), before any cluster is asked."""
    from keras_tuner.errors import FatalTypeError

    tuner = kt.RandomSearch(build, objective="val_accuracy", max_trials=1, cluster=NO_REDIS,
                            directory=tmp_path, project_name="no-model")
    x, y = small()
    with pytest.raises(FatalTypeError, match="return a valid Keras Model") as info:
        tuner.search(x, y, epochs=1, validation_data=(x, y))
    assert isinstance(info.value, SpecError)
    assert returned in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("state", "error", "raised"), [
    ("failed", "FatalTypeError: fit returned a str | errors: 1x ...", "SearchFatalTypeError"),
    ("failed", "FatalError: stop", "SearchFatalError"),
    # a reason read from Redis picks among KerasTuner's four classes, nothing else
    ("failed", "SystemExit: bye", "JobFailed"),
    ("failed", "keras_tuner.errors.FatalTypeError: x", "JobFailed"),
    ("failed", None, "JobFailed"),
    ("cancelled", "FatalTypeError: x", "JobCancelled"),
])
def test_a_search_ended_by_a_fatal_error_raises_keras_tuners_class(
        state: str, error: str | None, raised: str) -> None:
    from keras_tuner.errors import FatalError

    from tunecluster.api.tuner_errors import search_ended
    from tunecluster.errors import JobNotCompleted

    exc = search_ended("j1", {"state": state, "error": error})
    assert type(exc).__name__ == raised and isinstance(exc, JobNotCompleted)
    assert isinstance(exc, FatalError) == raised.startswith("SearchFatal")
    assert str(exc).startswith(f"job j1 {state}: ")
