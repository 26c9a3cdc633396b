"""tf.distribute strategy selection (real replication over two logical CPUs) and precision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest
import tensorflow as tf

from tunecluster.worker import precision
from tunecluster.worker.strategy import STRATEGIES, describe, pick_strategy

# Logical devices can only be configured before TensorFlow initializes its runtime,
# which this test process has done long ago: the mirrored check runs in a fresh one.
MIRRORED_SCRIPT = textwrap.dedent('''
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

    import keras
    import numpy as np
    from tunecluster.spec import parse_spec
    from tunecluster.spec.space import build_space, space_to_json
    from tunecluster.worker.runtime import JobRuntime
    from tunecluster.worker.strategy import describe, pick_strategy
    from tunecluster.worker.trial import TrialRequest, run_trial

    out = {}
    strategy = pick_strategy("mirrored")
    out["strategy"] = type(strategy).__name__
    out["describe"] = describe(strategy, 32)
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    before = [w.numpy().copy() for w in model.weights]
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    out["losses"] = history.history["loss"]
    out["variable_types"] = [type(w.value).__name__ for w in model.weights]
    out["replica_counts"] = [len(w.value.values) for w in model.weights]
    out["replicas_agree"] = all(
        np.array_equal(w.value.values[0].numpy(), w.value.values[1].numpy())
        for w in model.weights)
    out["weights_changed"] = any(
        not np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights))
    out["auto"] = type(pick_strategy("auto")).__name__

    # the trial runner, asked for mirrored, trains under it too
    spec = parse_spec({"name": "iris", "data": {"dataset": "iris"},
                       "model": {"builtin": "mlp"}, "search": {"objective": "val_accuracy"},
                       "train": {"epochs": 1, "batch_size": 16},
                       "resources": {"strategy": "mirrored"}})
    rt = JobRuntime.prepare("iris", spec, space_to_json(build_space({})), sys.argv[1])
    reporter = type("R", (), {"epoch": lambda self, e, m: False})()
    # two trials in one warm process, as a worker's trial child runs them
    results = [run_trial(rt, TrialRequest(f"t{i}", {"n_hidden": 1, "n_neurons": n}), reporter)
               for i, n in enumerate((8, 16))]
    out["trial_distribution"] = results[0].distribution
    out["second_trial_scores"] = [r.score for r in results]
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path_factory.mktemp("mirrored"))],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_mirrored_over_two_logical_cpus(mirrored: dict) -> None:
    assert mirrored["strategy"] == "MirroredStrategy"
    info = mirrored["describe"]
    assert info["replicas"] == 2
    assert [d.rsplit(":", 2)[-2:] for d in info["devices"]] == [["CPU", "0"], ["CPU", "1"]]
    assert info["per_replica_batch_size"] == 16


def test_mirrored_model_variables_are_mirrored(mirrored: dict) -> None:
    assert mirrored["variable_types"] == ["MirroredVariable"] * 4
    assert mirrored["replica_counts"] == [2] * 4
    assert mirrored["replicas_agree"]
    assert mirrored["weights_changed"]
    losses = mirrored["losses"]
    assert len(losses) == 2 and all(v == v for v in losses)  # trained, no NaN


def test_auto_on_cpu_is_the_default_strategy_even_with_two_cpus(mirrored: dict) -> None:
    assert mirrored["auto"] == "_DefaultDistributionStrategy"


def test_trial_runner_trains_under_the_requested_strategy(mirrored: dict) -> None:
    dist = mirrored["trial_distribution"]
    assert dist["strategy"] == "MirroredStrategy"
    assert dist["replicas"] == 2
    assert dist["global_batch_size"] == 16 and dist["per_replica_batch_size"] == 8
    # Keras 3 cannot run several steps per execution under MirroredStrategy (keras#19246)
    assert dist["steps_per_execution"] == 1


def test_a_second_mirrored_trial_in_the_same_process_trains(mirrored: dict) -> None:
    scores = mirrored["second_trial_scores"]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)


def test_the_strategy_is_picked_once_per_process() -> None:
    assert pick_strategy("one_device") is pick_strategy("one_device")


# --- in this process (one CPU device) ---------------------------------------------------------


@pytest.mark.parametrize("requested", ["auto", "default"])
def test_default_strategy_on_cpu(requested: str) -> None:
    strategy = pick_strategy(requested)
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    info = describe(strategy, 64)
    assert info["replicas"] == 1 and info["devices"] == []
    assert info["per_replica_batch_size"] == 64


def test_one_device_on_cpu() -> None:
    strategy = pick_strategy("one_device")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    info = describe(strategy, 32)
    assert info["replicas"] == 1
    assert info["devices"] and "CPU:0" in info["devices"][0].upper()


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="resources.strategy: 'tpu' is not one of auto"):
        pick_strategy("tpu")


def test_strategies_match_the_spec() -> None:
    from tunecluster.spec.training import Resources

    assert set(STRATEGIES) == set(Resources.model_fields["strategy"].annotation.__args__)


# --- mixed precision ----------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "capabilities", "expected"), [
    ("on", [], True),
    ("on", [(6, 1)], True),
    ("off", [(9, 0)], False),
    ("off", [], False),
    ("auto", [], False),                 # CPU only
    ("auto", [(7, 0)], True),            # Volta
    ("auto", [(8, 0), (9, 0)], True),
    ("auto", [(6, 1)], False),           # Pascal: no tensor cores
    ("auto", [(8, 6), (6, 0)], False),   # one old GPU decides
])
def test_wants_mixed_precision(setting: str, capabilities: list, expected: bool) -> None:
    assert precision.wants_mixed_precision(setting, capabilities) is expected


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.usefixtures("restore_policy")
def test_apply_policy_sets_the_global_policy() -> None:
    assert precision.apply_policy(True) == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert precision.describe() == {"dtype_policy": "mixed_float16"}
    assert precision.apply_policy(False) == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.usefixtures("restore_policy")
def test_policy_for_on_this_machine() -> None:
    if precision.visible_compute_capabilities():
        pytest.skip("a GPU is visible; the CPU-only expectation does not apply")
    assert precision.policy_for("auto") == "float32"
    assert precision.policy_for("on") == "mixed_float16"
    assert precision.policy_for("off") == "float32"


@pytest.mark.usefixtures("restore_policy")
def test_mixed_precision_keeps_the_output_layer_float32() -> None:
    from tunecluster.models import build_mlp

    precision.apply_policy(True)
    model = build_mlp({"n_hidden": 1, "n_neurons": 8}, input_shape=(4,), task="classification",
                      input_mode="flatten", label_kind="sparse", num_classes=3)
    assert model.get_layer("hidden_0").compute_dtype == "float16"
    assert model.get_layer("output").compute_dtype == "float32"
