"""A module's own fit (KerasTuner's HyperModel.fit) and executions_per_trial, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from test_trial import ListReporter, runtime

import tunecluster.keras_tuner as kt
from tunecluster.errors import SpecError, TrialFailed
from tunecluster.spec import parse_spec
from tunecluster.worker.fitting import Execution, average, execution_metrics, summarize
from tunecluster.worker.runtime import JobRuntime
from tunecluster.worker.trial import TrialRequest, run_trial

MODEL = '''
import keras

def build_model(hp):
    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                              keras.layers.Dense(hp.Int("units", 8, 16, default=8),
                                                 activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model
'''

TUNES_FIT = MODEL + '''
SEEN = []

def fit(hp, model, *args, **kwargs):
    SEEN.append((len(args), sorted(kwargs)))
    return model.fit(*args, batch_size=hp.Choice("batch_size", [64, 128]),
                     shuffle=hp.Boolean("shuffle"), **kwargs)
'''


def fit_model(source: str, **extra: Any) -> dict[str, Any]:
    return {"module": "user_model.py", "source": source, "fit": "fit", **extra}


@pytest.fixture(autouse=True)
def _seeded() -> None:
    keras.utils.set_random_seed(1)


def test_the_modules_fit_trains_and_its_hyperparameters_join_the_trial(tmp_path: Path) -> None:
    rt = runtime(tmp_path, model=fit_model(TUNES_FIT, fit_kwargs=["validation_data", "epochs"]),
                 epochs=2)
    reporter = ListReporter()
    result = run_trial(rt, TrialRequest("t1", {"units": 8}), reporter)
    # x and y as arrays, then what the search gave, and the worker's callbacks
    assert rt.fit_fn.__globals__["SEEN"] == [(2, ["callbacks", "epochs", "validation_data"])]
    assert reporter.epochs == [1, 2]  # the epochs went through the callbacks it passed on
    assert result.hyperparameters is not None  # the space grows by what fit declared
    grown = {p["config"]["name"] for p in result.hyperparameters["space"]}
    assert {"batch_size", "shuffle"} <= grown
    assert result.hyperparameters["values"]["batch_size"] == 64  # its default
    assert result.score == max(row["val_accuracy"] for row in result.epochs)


OWN_LOOP = MODEL + '''
def fit(hp, model, x, y, validation_data, **kwargs):
    model.fit(x, y, epochs=1, verbose=0)  # the user's own loop: no callbacks passed on
    loss, accuracy = model.evaluate(*validation_data, verbose=0)
    return {"val_accuracy": 0.25, "val_loss": float(loss)}
'''


def test_a_fit_of_its_own_reports_what_it_returns(tmp_path: Path) -> None:
    rt = runtime(tmp_path, model=fit_model(OWN_LOOP), epochs=3)
    reporter = ListReporter()
    result = run_trial(rt, TrialRequest("t1", {"units": 8}), reporter)
    assert result.score == 0.25 and result.metrics["val_accuracy"] == 0.25
    assert [e for e, _ in reporter.rows] == [1]  # one report, at its end
    assert reporter.rows[0][1]["val_accuracy"] == 0.25
    assert Path(result.model_path).is_file()


COUNTING = MODEL + '''
CALLS = []

def fit(hp, model, *args, **kwargs):
    CALLS.append(1)
    model.fit(*args, **{**kwargs, "epochs": 1})
    return 0.2 if len(CALLS) % 2 else 0.6
'''


def test_executions_per_trial_average_as_keras_tuner_does(tmp_path: Path) -> None:
    rt = runtime(tmp_path, model=fit_model(COUNTING), epochs=1, executions_per_trial=2)
    reporter = ListReporter()
    result = run_trial(rt, TrialRequest("t1", {"units": 8}), reporter)
    assert len(rt.fit_fn.__globals__["CALLS"]) == 2  # a model built and fit twice
    assert result.executions == 2
    assert result.score == pytest.approx(0.4)  # (0.2 + 0.6) / 2
    # each epoch went out as the mean of the executions so far: the second report of
    # epoch 1 is the mean of both executions' epoch 1
    assert [e for e, _ in reporter.rows] == [1, 1]


def test_executions_of_keras_fit_average_each_ones_best_epoch(tmp_path: Path) -> None:
    rt = runtime(tmp_path, epochs=2, executions_per_trial=3)
    reporter = ListReporter()
    result = run_trial(rt, TrialRequest("t1", {"n_hidden": 1, "n_neurons": 16,
                                               "learning_rate": 0.01}), reporter)
    assert result.executions == 3 and len(reporter.rows) == 6
    firsts = [m["val_accuracy"] for e, m in reporter.rows if e == 1]
    # the rows of epoch 1 are running means: the 2nd lies between the 1st and the 3rd's
    # raw value, which the mean of all three gives back
    assert result.epochs[0]["val_accuracy"] == pytest.approx(firsts[-1])
    assert 0 <= result.score <= 1 and result.best_epoch in (1, 2)


@pytest.mark.parametrize(("returned", "message", "fatal"), [
    # what KerasTuner refuses with a fatal error (the search ends at once) ...
    (None, "returned None. Did you forget to return the metrics?", "FatalTypeError"),
    ({"accuracy": 0.5}, "without the objective 'val_accuracy'", "FatalValueError"),
    ("good", r"Expected the return value of fit\(\) to be one of float, dict,.* a str",
     "FatalTypeError"),
    # a string, even one float() parses, is no number
    ("0.5", "to be one of float, dict.* a str: '0.5'", "FatalTypeError"),
    # ... and what fails that trial only
    ({"val_accuracy": "0.5"}, "returned metric 'val_accuracy' = '0.5', not a number", ""),
    ({"val_accuracy": "high"}, "returned metric 'val_accuracy' = 'high', not a number", ""),
    ([], "returned an empty list", ""),
])
def test_what_a_fit_returns_is_checked_as_keras_tuner_does(returned: Any, message: str,
                                                            fatal: str) -> None:
    with pytest.raises(TrialFailed, match=message) as info:
        execution_metrics(Execution([], returned), "val_accuracy", "max", "fit()")
    assert info.value.fatal == fatal


def test_a_list_and_numpy_values_are_read_as_keras_tuner_reads_them() -> None:
    runs = [Execution([], [0.2, np.float32(0.4)]), Execution([], {"val_accuracy": 0.6,
                                                                  "val_loss": 1.0})]
    metrics, best_epoch = summarize(runs, "val_accuracy", "max", "fit()")
    assert metrics["val_accuracy"] == pytest.approx(((0.2 + 0.4) / 2 + 0.6) / 2)
    assert metrics["val_loss"] == 1.0 and best_epoch == 1
    assert average([{"a": 1.0}, {"a": 3.0, "b": 2.0}]) == {"a": 2.0, "b": 2.0}


def test_fit_is_for_module_models_and_one_worker_per_trial() -> None:
    base = {"name": "j", "data": {"dataset": "digits"}}
    with pytest.raises(SpecError, match="fit applies to module models only"):
        parse_spec({**base, "model": {"builtin": "mlp", "fit": "fit"}})
    with pytest.raises(SpecError, match="workers_per_trial to 1"):
        parse_spec({**base, "model": fit_model(TUNES_FIT),
                    "resources": {"workers_per_trial": 2}})
    with pytest.raises(SpecError, match="executions_per_trial"):
        parse_spec({**base, "model": {"builtin": "mlp"}, "train": {"executions_per_trial": 0}})


def test_class_weight_reaches_kerass_fit(tmp_path: Path) -> None:
    """train.class_weight (the drop-in's search(class_weight=)): every class weighted 0
    leaves nothing to learn from, so the training loss is 0."""
    rt = runtime(tmp_path, epochs=1, class_weight={k: 0.0 for k in range(10)})
    result = run_trial(rt, TrialRequest("t1", {"n_hidden": 1, "n_neurons": 16,
                                               "learning_rate": 0.01}), ListReporter())
    assert result.epochs[0]["loss"] == 0.0
    assert result.epochs[0]["val_loss"] > 0  # validation is not weighted


def test_an_oversized_model_fails_its_trial(tmp_path: Path) -> None:
    """KerasTuner's max_model_size (train.max_model_size): more parameters, a failed
    trial, in KerasTuner's words."""
    rt = runtime(tmp_path, epochs=1, max_model_size=100)
    with pytest.raises(TrialFailed, match="Oversized model: [0-9]+ parameters"):
        run_trial(rt, TrialRequest("t1", {"n_hidden": 1, "n_neurons": 16,
                                          "learning_rate": 0.01}), ListReporter())


def test_a_run_trial_reporting_through_the_oracle_is_scored_on_the_worker(
        tmp_path: Path) -> None:
    """KerasTuner's older run_trial reports with self.oracle.update_trial and returns
    None: the worker's tuner has an oracle that takes those reports (and no data: the
    search was called without any)."""
    from tunecluster.spec.space import space_to_json

    class Reports(kt.RandomSearch):
        def run_trial(self, trial, *args, **kwargs):
            x = trial.hyperparameters.Float("x", 0.0, 1.0)
            self.oracle.update_trial(trial.trial_id, {"score": x * 10})

    tuner = Reports(objective=kt.Objective("score", "max"), max_trials=1,
                    cluster="redis://127.0.0.1:1/0")
    spec = parse_spec(tuner._job_spec(None, None, None, None, 1, 32, None, True, {})[0])
    rt = JobRuntime.prepare("job-1", spec, space_to_json(kt.HyperParameters()),
                            tmp_path / "artifacts")
    reporter = ListReporter()
    result = run_trial(rt, TrialRequest("t1", {"x": 0.25}), reporter)
    assert result.score == 2.5 and reporter.rows == [(1, {"score": 2.5})]
    assert result.model_path == ""  # no hypermodel: no model kept


@pytest.mark.parametrize("returned", [{"val_loss": 0.5}, {"score": 1.0}, "a"])
def test_without_an_objective_a_fit_must_return_a_number(returned: Any) -> None:
    """KerasTuner's default objective (none given, the trials scored by the user's own
    fit or run_trial) is the number returned; anything else is its FatalTypeError."""
    with pytest.raises(TrialFailed, match=r"Expected the return value of HyperModel\.fit\(\)"
                                          r" to be a single float when `objective` is left"
                                          r" unspecified") as info:
        execution_metrics(Execution([], returned), "default_objective", "min",
                          "HyperModel.fit()")
    assert info.value.fatal == "FatalTypeError"


def test_without_an_objective_the_number_returned_is_the_score() -> None:
    for returned in (0.25, [0.2, 0.3], {"default_objective": 0.25, "val_loss": 9.0}):
        metrics, _ = execution_metrics(Execution([], returned), "default_objective", "min",
                                       "fit()")
        assert metrics["default_objective"] == pytest.approx(0.25)


WITH_CALLBACKS = MODEL + '''
MADE = []


class Counts(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((epoch, "val_accuracy" in (logs or {})))


def callbacks():
    MADE.append(Counts())
    return [MADE[-1], keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.02)]
'''


def test_a_modules_callbacks_train_every_execution_with_a_new_list(tmp_path: Path) -> None:
    """model.callbacks: each execution trains with what a call returns (Keras's own fit
    here; a module's fit is given them in ``callbacks``), the worker's reporter after."""
    rt = runtime(tmp_path, model={"module": "user_model.py", "source": WITH_CALLBACKS,
                                  "callbacks": "callbacks"}, epochs=2, executions_per_trial=2)
    reporter = ListReporter()
    run_trial(rt, TrialRequest("t1", {"units": 8}), reporter)
    made = rt.callbacks_fn.__globals__["MADE"]
    assert len(made) == 2  # one list per execution
    assert [c.epochs for c in made] == [[(0, True), (1, True)]] * 2
    assert all(m["learning_rate"] == pytest.approx(0.02) for _, m in reporter.rows)


def test_a_callbacks_function_returning_no_list_fails_the_trial(tmp_path: Path) -> None:
    rt = runtime(tmp_path, model={"module": "user_model.py", "callbacks": "callbacks",
                                  "source": MODEL + "\ndef callbacks():\n    return 3\n"})
    with pytest.raises(TrialFailed, match=r"callbacks\(\) returned int: return a list of"
                                          " Keras callbacks"):
        run_trial(rt, TrialRequest("t1", {"units": 8}), ListReporter())


def test_callbacks_apply_to_module_models_only() -> None:
    with pytest.raises(SpecError, match="callbacks applies to module models only"):
        parse_spec({"name": "d", "data": {"dataset": "digits"},
                    "model": {"builtin": "mlp", "callbacks": "callbacks"},
                    "search": {"objective": "val_accuracy"}})


def _weighted_runtime(tmp_path: Path, **train: Any) -> JobRuntime:
    """The digits split into npz files, every validation row weighing 0."""
    from tunecluster.data import DATASETS

    x, y = DATASETS["digits"].load()
    x = x.reshape(len(x), -1)
    for name, rows, weights in (("train", slice(0, 1200), np.ones(1200)),
                                ("valid", slice(1200, None), np.zeros(len(x) - 1200))):
        np.savez(tmp_path / f"{name}.npz", x=x[rows], y=y[rows], sample_weight=weights)
    spec = parse_spec({
        "name": "weighted", "data": {"files": {"train": str(tmp_path / "train.npz"),
                                               "valid": str(tmp_path / "valid.npz"),
                                               "test": str(tmp_path / "valid.npz")}},
        "model": {"module": "user_model.py", "source": MODEL.replace("(8, 8)", "(64,)")
                  .replace("keras.layers.Flatten(), ", "")},
        "search": {"objective": "val_loss"}, "train": {"epochs": 1, **train}})
    return JobRuntime.prepare("job-w", spec, {"space": [], "values": {}}, tmp_path / "artifacts")


def test_sample_weights_of_the_data_files_weigh_training_and_validation(
        tmp_path: Path) -> None:
    rt = _weighted_runtime(tmp_path)
    assert rt.splits.w_valid is not None and not rt.splits.w_valid.any()
    result = run_trial(rt, TrialRequest("t1", {"units": 8}), ListReporter())
    # every validation row weighs 0: Keras's weighted mean of the losses is 0
    assert result.metrics["val_loss"] == 0.0 and result.metrics["loss"] > 0
