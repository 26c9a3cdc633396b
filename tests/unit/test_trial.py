"""The in-process trial runner: epochs reported, best model saved, stop, resume, failures."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from tunecluster.errors import TrialFailed
from tunecluster.models import ModelCodeError
from tunecluster.spec import parse_spec
from tunecluster.spec.space import build_space, space_to_json
from tunecluster.worker.runtime import JobRuntime
from tunecluster.worker.trial import (
    CHECKPOINT,
    MODEL_FILE,
    TrialRequest,
    TrialResult,
    read_checkpoint,
    run_trial,
)

SMALL = {"n_hidden": 1, "n_neurons": 16, "learning_rate": 0.01}


class ListReporter:
    """Collects every reported epoch; answers True (stop) from ``stop_at`` on."""

    def __init__(self, stop_at: int | None = None, die_at: int | None = None) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.stop_at = stop_at
        self.die_at = die_at

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        if self.die_at is not None and epoch == self.die_at:
            raise RuntimeError("worker died")
        self.rows.append((epoch, dict(metrics)))
        return self.stop_at is not None and epoch >= self.stop_at

    @property
    def epochs(self) -> list[int]:
        return [e for e, _ in self.rows]


def runtime(tmp_path: Path, *, model: dict[str, Any] | None = None,
            search: dict[str, Any] | None = None, **train: Any) -> JobRuntime:
    spec = parse_spec({
        "name": "digits",
        "data": {"dataset": "digits"},
        "model": model or {"builtin": "mlp"},
        "search": search or {"objective": "val_accuracy"},
        "train": {"epochs": 2, "batch_size": 128, **train},
    })
    space = space_to_json(build_space(spec.model.hyperparameters))
    return JobRuntime.prepare("job-1", spec, space, tmp_path / "artifacts")


def valid_scores(model_path: str, rt: JobRuntime) -> dict[str, float]:
    """Accuracy and crossentropy of a saved model on the validation split (eager, no tracing)."""
    model = keras.models.load_model(model_path)
    probs = np.asarray(model(rt.splits.x_valid, training=False), dtype="float64")
    y = rt.splits.y_valid
    return {"accuracy": float(np.mean(probs.argmax(axis=1) == y)),
            "loss": float(-np.mean(np.log(probs[np.arange(len(y)), y])))}


@pytest.fixture(autouse=True)
def _seeded() -> None:
    keras.utils.set_random_seed(1)


def test_trial_reports_every_epoch_and_saves_the_best_model(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    reporter = ListReporter()
    result = run_trial(rt, TrialRequest("t1", dict(SMALL)), reporter)

    assert isinstance(result, TrialResult)
    assert reporter.epochs == [1, 2]
    assert all({"loss", "accuracy", "val_loss", "val_accuracy"} <= set(m) for _, m in reporter.rows)
    assert [row["epoch"] for row in result.epochs] == [1, 2]
    best = max(result.epochs, key=lambda r: r["val_accuracy"])
    assert result.score == best["val_accuracy"]
    assert result.best_epoch == best["epoch"]
    assert result.metrics["val_accuracy"] == result.score and "epoch" not in result.metrics
    assert result.score > 0.3
    assert not result.stopped_early and result.resumed_from_epoch == 0

    trial_dir = tmp_path / "artifacts" / "job-1" / "trials" / "t1"
    assert result.model_path == str(trial_dir / MODEL_FILE)
    assert (trial_dir / CHECKPOINT).is_file()
    assert read_checkpoint(trial_dir)[0]["epoch"] == 2
    scores = valid_scores(result.model_path, rt)
    assert scores["accuracy"] == pytest.approx(result.score, abs=1e-6)

    assert result.distribution["replicas"] == 1
    assert result.distribution["dtype_policy"] == "float32"
    assert result.distribution["steps_per_execution"] == 9  # ceil(1079 / 128) < 32
    assert set(result.timings) == {"setup_s", "build_s", "fit_s", "save_s", "build_at",
                                   "last_epoch_at"}
    json.dumps(result.to_json())  # goes over the wire as JSON


def test_saved_model_holds_the_best_epoch_not_the_last(tmp_path: Path) -> None:
    # "max val_loss" makes epoch 1 the best one while training keeps lowering the loss.
    rt = runtime(tmp_path, search={"objective": {"name": "val_loss", "direction": "max"}})
    result = run_trial(rt, TrialRequest("t1", dict(SMALL)), ListReporter())
    assert result.epochs[1]["val_loss"] < result.epochs[0]["val_loss"]
    assert result.best_epoch == 1
    assert result.score == result.epochs[0]["val_loss"]
    scores = valid_scores(result.model_path, rt)
    assert scores["loss"] == pytest.approx(result.epochs[0]["val_loss"], rel=1e-5)


def test_reporter_answer_stops_the_trial(tmp_path: Path) -> None:
    rt = runtime(tmp_path, epochs=5, steps_per_execution=3)
    reporter = ListReporter(stop_at=2)
    result = run_trial(rt, TrialRequest("t1", dict(SMALL)), reporter)
    assert reporter.epochs == [1, 2]
    assert len(result.epochs) == 2
    assert result.stopped_early
    assert Path(result.model_path).is_file()
    assert result.distribution["steps_per_execution"] == 3  # as the job asked


def test_retry_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    rt = runtime(tmp_path, epochs=3)
    first = ListReporter(die_at=2)  # the checkpoint of epoch 2 is written, then the worker dies
    with pytest.raises(RuntimeError, match="worker died"):
        run_trial(rt, TrialRequest("t1", dict(SMALL)), first)
    assert first.epochs == [1]

    second = ListReporter()
    result = run_trial(rt, TrialRequest("t1", dict(SMALL), attempt=2), second)
    assert result.resumed_from_epoch == 2
    assert second.epochs == [1, 2, 3]  # the resumed epochs are reported again (idempotent)
    assert second.rows[0][1] == first.rows[0][1]
    assert [row["epoch"] for row in result.epochs] == [1, 2, 3]
    assert result.score == max(row["val_accuracy"] for row in result.epochs)


def test_first_attempt_ignores_files_it_did_not_write(tmp_path: Path) -> None:
    rt = runtime(tmp_path, epochs=1)
    trial_dir = rt.trial_dir("t1")
    trial_dir.mkdir(parents=True)
    (trial_dir / CHECKPOINT).write_bytes(b"not weights")
    reporter = ListReporter()
    result = run_trial(rt, TrialRequest("t1", dict(SMALL), attempt=1), reporter)
    assert result.resumed_from_epoch == 0
    assert reporter.epochs == [1]
    assert read_checkpoint(trial_dir)[0]["epoch"] == 1


def test_retry_without_checkpoint_starts_over(tmp_path: Path) -> None:
    rt = runtime(tmp_path, epochs=1)
    reporter = ListReporter()
    result = run_trial(rt, TrialRequest("t1", dict(SMALL), attempt=2), reporter)
    assert result.resumed_from_epoch == 0
    assert reporter.epochs == [1]


def _epochs_under_keras_early_stopping(patience: int, min_delta: float) -> int:
    """How many of 8 epochs Keras's own EarlyStopping lets a tiny model train."""
    import keras
    import numpy as np

    x, y = np.random.default_rng(0).normal(size=(32, 4)), np.arange(32) % 2
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping("val_accuracy", patience=patience,
                                         min_delta=min_delta, mode="max")
    history = model.fit(x, y, validation_data=(x, y), epochs=8, verbose=0, callbacks=[stop])
    return len(history.history["loss"])


def test_early_stopping_with_patience(tmp_path: Path) -> None:
    # A min_delta no accuracy can beat: no epoch after the first counts as an improvement,
    # so patience 1 stops after epoch 2 of 8, as Keras's EarlyStopping(patience=1) does
    # (the drop-in maps that callback onto this setting); patience 2 after epoch 3.
    for patience, epochs in ((1, [1, 2]), (2, [1, 2, 3])):
        rt = runtime(tmp_path / str(patience), epochs=8,
                     early_stopping={"patience": patience, "min_delta": 10.0})
        reporter = ListReporter()
        result = run_trial(rt, TrialRequest("t1", dict(SMALL)), reporter)
        assert reporter.epochs == epochs
        assert len(reporter.epochs) == _epochs_under_keras_early_stopping(patience, 10.0)
    assert result.stopped_early
    # the saved model is still the best epoch's, as reported
    best = max(result.epochs, key=lambda r: r["val_accuracy"])
    assert (result.best_epoch, result.score) == (best["epoch"], best["val_accuracy"])
    scores = valid_scores(result.model_path, rt)
    assert scores["accuracy"] == pytest.approx(result.score, abs=1e-6)


def test_hyperband_continues_an_earlier_trial(tmp_path: Path) -> None:
    rt = runtime(tmp_path, epochs=3)
    run_trial(rt, TrialRequest("a", {**SMALL, "tuner/epochs": 1, "tuner/initial_epoch": 0}),
              ListReporter())
    reporter = ListReporter()
    result = run_trial(rt, TrialRequest("b", {**SMALL, "tuner/epochs": 2,
                                              "tuner/initial_epoch": 1, "tuner/trial_id": "a"}),
                       reporter)
    assert reporter.epochs == [2]
    assert [row["epoch"] for row in result.epochs] == [2]


def test_on_an_object_store_retries_and_promotions_read_the_bucket(
        tmp_path: Path, s3_env: dict[str, str], s3_bucket: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With an s3:// root the checkpoint and the model are objects: a retry resumes and a
    Hyperband promotion continues from them with nothing left on this host's disk."""
    import shutil

    from tunecluster import artifact_store

    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(artifact_store.STAGING_ENV, str(tmp_path / "staging"))
    url = f"s3://{s3_bucket}/trial-{tmp_path.name}"
    root = artifact_store.local_root(url)
    spec = parse_spec({"name": "digits", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp"}, "search": {"objective": "val_accuracy"},
                       "train": {"epochs": 3, "batch_size": 128}})
    rt = JobRuntime.prepare("job-1", spec, space_to_json(build_space(spec.model.hyperparameters)),
                            root)
    bucket = artifact_store.open_store(url)
    with pytest.raises(RuntimeError, match="worker died"):
        run_trial(rt, TrialRequest("t1", dict(SMALL), isolated=True), ListReporter(die_at=2))
    assert bucket.list("job-1") == ["job-1/trials/t1/attempt-1/last.npz"]
    shutil.rmtree(root / "job-1")  # another host: nothing of the first one's disk
    result = run_trial(rt, TrialRequest("t1", dict(SMALL), attempt=2, isolated=True),
                       ListReporter())
    assert result.resumed_from_epoch == 2
    model_key = bucket.key(result.model_path)
    assert model_key == "job-1/trials/t1/attempt-2/model.keras" and bucket.exists(model_key)
    assert not Path(result.model_path).exists()  # uploaded, not kept here
    shutil.rmtree(root / "job-1")
    reporter = ListReporter()
    promoted = run_trial(rt, TrialRequest("t2", {**SMALL, "tuner/epochs": 4,
                                                 "tuner/initial_epoch": 3, "tuner/trial_id": "t1"},
                                          parent_model=result.model_path), reporter)
    assert reporter.epochs == [4]
    assert bucket.exists(bucket.key(promoted.model_path))


# --- failures -------------------------------------------------------------------------------

NAN_MODEL = '''
import keras

def build_model(hp):
    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="sgd", metrics=["accuracy"],
                  loss=lambda y, p: keras.ops.mean(p) * float("nan"))
    return model
'''

NO_METRICS_MODEL = '''
import keras

def build_model(hp):
    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model
'''

BROKEN_BUILD = '''
def build_model(hp):
    raise KeyError("units")
'''


def custom(source: str) -> dict[str, Any]:
    return {"module": "user_model.py", "source": source}


def test_nan_loss_fails_the_trial(tmp_path: Path) -> None:
    rt = runtime(tmp_path, model=custom(NAN_MODEL))
    reporter = ListReporter()
    with pytest.raises(TrialFailed, match="loss is nan at epoch 1"):
        run_trial(rt, TrialRequest("t1", {}), reporter)
    assert reporter.epochs == []  # a NaN epoch is never reported as a result


def test_objective_not_reported_fails_the_trial(tmp_path: Path) -> None:
    rt = runtime(tmp_path, model=custom(NO_METRICS_MODEL))
    with pytest.raises(TrialFailed) as info:
        run_trial(rt, TrialRequest("t1", {}), ListReporter())
    text = str(info.value)
    assert "objective 'val_accuracy' is not reported by the model" in text
    assert "it reports: loss, val_loss" in text


def test_model_code_raising_fails_the_trial(tmp_path: Path) -> None:
    rt = runtime(tmp_path, model=custom(BROKEN_BUILD))
    with pytest.raises(ModelCodeError, match="build_model\\(hp\\) raised KeyError"):
        run_trial(rt, TrialRequest("t1", {}), ListReporter())


def test_custom_model_trial_succeeds(tmp_path: Path) -> None:
    rt = runtime(tmp_path, model=custom(NO_METRICS_MODEL), search={"objective": "val_loss"},
                 epochs=1)
    result = run_trial(rt, TrialRequest("t1", {}), ListReporter())
    assert result.score == result.epochs[0]["val_loss"]
    assert np.isfinite(result.score)


XLA_MODEL = NO_METRICS_MODEL.replace('loss="sparse_categorical_crossentropy")',
                                     'loss="sparse_categorical_crossentropy", jit_compile=True)')


@pytest.mark.parametrize(("setting", "expected"), [(True, True), (False, False), ("auto", False)])
def test_jit_compile_setting_reaches_the_trained_model(tmp_path: Path, setting: Any,
                                                        expected: bool) -> None:
    # auto on this CPU host: off (bench/xla.py: XLA made every trial slower on CPU)
    rt = runtime(tmp_path, epochs=1, jit_compile=setting)
    result = run_trial(rt, TrialRequest("t1", dict(SMALL)), ListReporter())
    assert result.distribution["jit_compile"] is expected


def test_auto_keeps_a_user_model_compiled_with_xla_and_false_turns_it_off(tmp_path: Path) -> None:
    for setting, expected in (("auto", True), (False, False)):
        rt = runtime(tmp_path / str(setting), model=custom(XLA_MODEL),
                     search={"objective": "val_loss"}, epochs=1, jit_compile=setting)
        result = run_trial(rt, TrialRequest("t1", {}), ListReporter())
        assert result.distribution["jit_compile"] is expected
