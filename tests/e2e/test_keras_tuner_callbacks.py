"""A search's own Keras callbacks run on the workers, as KerasTuner runs them (issue 24):
each execution of each trial gets its own copy, before the worker's own callbacks; a
callback KerasTuner would refuse, or one that cannot travel, is refused in one line and
nothing is queued."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import keras
import pytest

import tunecluster.keras_tuner as kt
from tunecluster.errors import SpecError
from tunecluster.store import Store

from .dropin_digits import build_digits

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
sys.path.insert(0, str(Path(__file__).parent))


class MarksEachEpoch(keras.callbacks.Callback):
    """A callback of the user's own: a file per epoch, named by process, copy and epoch."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def on_epoch_end(self, epoch, logs=None):
        Path(self.where, f"{os.getpid()}-{id(self)}-{epoch}").touch()


def halving(epoch, lr):
    return 0.01 * 0.5 ** epoch


def test_the_searchs_callbacks_run_on_the_workers_a_copy_per_execution(
        cluster, tmp_path: Path, monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    marks = tmp_path / "marks"
    marks.mkdir()
    tuner = kt.RandomSearch(build_digits, objective="val_accuracy", max_trials=2, seed=7,
                            executions_per_trial=2, directory=tmp_path,
                            project_name="callbacks", cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=2, verbose=0,
                 validation_data=(example.X_valid, example.y_valid),
                 callbacks=[MarksEachEpoch(str(marks)),
                            keras.callbacks.LearningRateScheduler(halving),
                            keras.callbacks.EarlyStopping(patience=5)])
    files = [f.name.split("-") for f in marks.iterdir()]
    # 2 trials x 2 executions x 2 epochs, on the workers' processes, never here
    assert len(files) == 8, files
    assert {pid for pid, _, _ in files}.isdisjoint({str(os.getpid())})
    assert len({copy for _, copy, _ in files}) == 4  # a copy of it for each execution
    assert sorted(epoch for _, _, epoch in files) == ["0"] * 4 + ["1"] * 4
    store = Store.from_url(cluster.url)
    trials = [t for t in tuner.job.results()["trials"] if t["state"] == "COMPLETED"]
    assert len(trials) == 2
    for trial in trials:  # the scheduler set the rate each epoch, as Keras logs it
        epochs = store.jobs.epochs(tuner.job.id, trial["trial"])
        assert [round(epochs[e]["learning_rate"], 6) for e in (1, 2)] == [0.01, 0.005]


def test_a_callback_that_cannot_be_copied_is_keras_tuners_error_and_nothing_is_queued(
        cluster, tmp_path: Path) -> None:
    import dropin_notebook_style as example

    store = Store.from_url(cluster.url)
    before = set(store.jobs.all())
    tuner = kt.RandomSearch(build_digits, objective="val_accuracy", max_trials=2,
                            directory=tmp_path, project_name="no-copy", cluster=cluster.url)
    with pytest.raises(kt.errors.FatalValueError,
                       match="All callbacks used during a search should be deep-copyable"):
        tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                     validation_data=(example.X_valid, example.y_valid),
                     callbacks=[kt])  # a module: KerasTuner's own test of this
    holds_a_lock = MarksEachEpoch(str(tmp_path))
    holds_a_lock.where = threading.Lock()
    with pytest.raises(kt.errors.FatalValueError):
        tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                     validation_data=(example.X_valid, example.y_valid),
                     callbacks=[holds_a_lock])
    cannot_travel = MarksEachEpoch(str(tmp_path))
    cannot_travel.where = object()  # copied, but no literal, array or code
    with pytest.raises(SpecError, match="callbacks.*MarksEachEpoch cannot travel to the"
                                        " workers: its attribute 'where' holds a object"):
        tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                     validation_data=(example.X_valid, example.y_valid),
                     callbacks=[cannot_travel])
    assert set(store.jobs.all()) == before
