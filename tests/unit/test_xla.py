"""train.jit_compile: true/false as given, auto per device kind, applied to real models."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from tunecluster.worker import xla
from tunecluster.worker.xla import AUTO, apply, device_kind, use_jit_compile


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
@pytest.mark.parametrize("setting", [True, False])
def test_true_and_false_are_kept_on_every_device(setting: bool, kind: str) -> None:
    assert use_jit_compile(setting, kind) is setting
    assert use_jit_compile(setting, kind, replicas=4) is setting


def test_auto_follows_the_measured_choice_per_device_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    # bench/xla.py on CPU: XLA made every trial of the course's models slower.
    assert use_jit_compile("auto", "cpu") is False
    assert use_jit_compile("auto", "gpu") is AUTO["gpu"]
    monkeypatch.setitem(xla.AUTO, "gpu", True)
    assert use_jit_compile("auto", "gpu") is True
    assert use_jit_compile("auto", "cpu") is False


def test_auto_is_off_under_several_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(xla.AUTO, "gpu", True)
    assert use_jit_compile("auto", "gpu", replicas=1) is True
    assert use_jit_compile("auto", "gpu", replicas=2) is False


@pytest.mark.parametrize("setting", ["on", "yes", 1, 0, None, "AUTO"])
def test_a_bad_setting_is_one_line_naming_the_field(setting: Any) -> None:
    with pytest.raises(ValueError) as err:
        use_jit_compile(setting, "cpu")
    message = str(err.value)
    assert message == f"train.jit_compile: {setting!r} is not one of auto, true, false"


def test_an_unknown_device_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"device kind 'tpu' is not one of cpu, gpu"):
        use_jit_compile("auto", "tpu")


class _Devices:
    """A strategy's device list, as tf.distribute reports it (pure logic under test)."""

    def __init__(self, *devices: str) -> None:
        self.extended = type("Extended", (), {"worker_devices": devices})()
        self.num_replicas_in_sync = len(devices)


def test_device_kind_from_the_strategy_devices() -> None:
    assert device_kind(_Devices("/job:localhost/replica:0/task:0/device:GPU:0")) == "gpu"
    assert device_kind(_Devices("/job:localhost/replica:0/task:0/device:CPU:0")) == "cpu"
    assert device_kind(_Devices("/device:CPU:0", "/device:GPU:1")) == "gpu"


def test_device_kind_of_real_strategies_on_this_cpu_host() -> None:
    assert not tf.config.list_logical_devices("GPU"), "this test is for a CPU-only host"
    assert device_kind(tf.distribute.get_strategy()) == "cpu"  # names no devices
    assert device_kind(tf.distribute.OneDeviceStrategy("/cpu:0")) == "cpu"


def _model() -> Any:
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    return model


def test_apply_sets_a_real_model_and_the_model_trains_with_xla() -> None:
    strategy = tf.distribute.get_strategy()
    model = _model()
    assert apply(model, True, strategy) is True
    assert model.jit_compile is True
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    model = _model()
    assert apply(model, "auto", strategy) is AUTO["cpu"]
    assert model.jit_compile is AUTO["cpu"]
    assert apply(model, False, strategy) is False


def test_auto_keeps_a_user_model_compiled_with_xla_but_not_a_builtin_one() -> None:
    strategy = tf.distribute.get_strategy()
    model = _model()
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", jit_compile=True)
    assert apply(model, "auto", strategy, keep_model_choice=True) is True
    assert model.jit_compile is True
    assert apply(model, "auto", strategy) is AUTO["cpu"]  # builtin: the measured choice
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", jit_compile=True)
    assert apply(model, False, strategy, keep_model_choice=True) is False  # false is false
