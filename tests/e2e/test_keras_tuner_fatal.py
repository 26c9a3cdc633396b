"""KerasTuner's fatal errors end the search at once, through a real cluster (issue 24):
a trial that raises ``kt.errors.FatalError`` (or one of its kinds), or whose fit or
run_trial returns what KerasTuner refuses with one, fails the job without the trials a
``max_consecutive_failed_trials`` run would take, and ``search()`` raises KerasTuner's
class (which is also the cluster's ``JobFailed``), with KerasTuner's message."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import pytest

import tunecluster.keras_tuner as kt
from tunecluster.errors import JobFailed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
sys.path.insert(0, str(Path(__file__).parent))

# The trials in flight when the first one fails: one per worker of the shared cluster
# (conftest.py: 2) and the one a random search keeps ready ahead (chief/top_up.py).
IN_FLIGHT = 3


class ReturnsAName(kt.HyperModel):
    """Its fit returns a string, which is no metric."""

    def build(self, hp):
        model = keras.Sequential([keras.Input((64,)),
                                  keras.layers.Dense(hp.Int("units", 8, 64, step=8)),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model

    def fit(self, hp, model, *args, **kwargs):
        return hp.Choice("value", ["a", "b"])


class ScoresByUnits(ReturnsAName):
    """Its fit returns one number: KerasTuner's default objective, when none is given."""

    def fit(self, hp, model, *args, **kwargs):
        return abs(hp.get("units") - 40) / 8.0


class ReturnsADict(ReturnsAName):
    def fit(self, hp, model, *args, **kwargs):
        return {"val_loss": hp.get("units") / 8.0}


class RefusesItsPoint(kt.RandomSearch):
    """A run_trial that raises KerasTuner's FatalValueError: nothing more is worth trying."""

    def run_trial(self, trial, *args, **kwargs):
        x = trial.hyperparameters.Float("x", 0, 1)
        raise kt.errors.FatalValueError(f"x={x:.3f} is outside what the plant takes")


def _trials(tuner) -> list[dict]:
    return tuner.job.results()["trials"]


def test_a_fit_returning_no_metric_ends_the_search_with_keras_tuners_type_error(
        cluster, tmp_path: Path, monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.RandomSearch(ReturnsAName(), objective="val_accuracy", max_trials=8,
                            max_consecutive_failed_trials=8, seed=3, directory=tmp_path,
                            project_name="fit-returns-a-name", cluster=cluster.url)
    with pytest.raises(kt.errors.FatalTypeError,
                       match=r"HyperModel\.fit\(\) to be one of float, dict") as info:
        tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                     validation_data=(example.X_valid, example.y_valid))
    assert isinstance(info.value, TypeError) and isinstance(info.value, JobFailed)
    assert "it returned a str" in str(info.value)
    trials = _trials(tuner)
    # at once: no trial after those in flight (8 failures in a row would end it else)
    assert 1 <= len(trials) <= IN_FLIGHT, trials
    assert all(t["state"] in ("FAILED", "CANCELLED") for t in trials), trials
    assert tuner.job.status()["state"] == "failed"


def test_a_run_trial_raising_a_fatal_error_ends_the_search_with_it(
        cluster, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = RefusesItsPoint(objective=kt.Objective("score", "max"), max_trials=6,
                            max_consecutive_failed_trials=6, seed=5, directory=tmp_path,
                            project_name="fatal-run-trial", cluster=cluster.url)
    with pytest.raises(kt.errors.FatalValueError,
                       match=r"x=0\.\d{3} is outside what the plant takes") as info:
        tuner.search()
    assert isinstance(info.value, ValueError) and isinstance(info.value, JobFailed)
    assert not isinstance(info.value, TypeError)
    assert 1 <= len(_trials(tuner)) <= IN_FLIGHT, _trials(tuner)


def test_a_plain_error_still_fails_only_its_trial(cluster, tmp_path: Path,
                                                  monkeypatch) -> None:
    """The consecutive-failure rule is unchanged for errors that are not fatal."""

    class Breaks(kt.RandomSearch):
        def run_trial(self, trial, *args, **kwargs):
            trial.hyperparameters.Float("x", 0, 1)
            raise ValueError("broken on purpose")

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = Breaks(objective=kt.Objective("score", "max"), max_trials=6,
                   max_consecutive_failed_trials=3, seed=6, directory=tmp_path,
                   project_name="plain-error", cluster=cluster.url)
    with pytest.raises(JobFailed, match="3 consecutive trials failed") as info:
        tuner.search()
    assert not isinstance(info.value, kt.errors.FatalError)
    assert len(_trials(tuner)) >= 3


def test_without_an_objective_the_number_a_fit_returns_is_minimized(
        cluster, tmp_path: Path, monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.RandomSearch(ScoresByUnits(), max_trials=4, seed=2, directory=tmp_path,
                            project_name="default-objective", cluster=cluster.url)
    assert tuner.oracle.objective.name == "default_objective"  # KerasTuner's own
    tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    trials = [t for t in _trials(tuner) if t["state"] == "COMPLETED"]
    assert len(trials) == 4
    best = min(trials, key=lambda t: abs(t["hyperparameters"]["units"] - 40))
    assert tuner.get_best_hyperparameters(1)[0].values["units"] == \
        best["hyperparameters"]["units"]
    assert tuner.oracle.get_best_trials(1)[0].score == pytest.approx(
        abs(best["hyperparameters"]["units"] - 40) / 8.0)


def test_without_an_objective_a_fit_returning_a_dict_ends_the_search(
        cluster, tmp_path: Path, monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.RandomSearch(ReturnsADict(), max_trials=6, max_consecutive_failed_trials=6,
                            seed=2, directory=tmp_path, project_name="dict-no-objective",
                            cluster=cluster.url)
    with pytest.raises(kt.errors.FatalTypeError,
                       match=r"HyperModel\.fit\(\) to be a single float when `objective`"):
        tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                     validation_data=(example.X_valid, example.y_valid))
    assert 1 <= len(_trials(tuner)) <= IN_FLIGHT
