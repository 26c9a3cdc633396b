"""A ``HyperModel``'s own ``fit`` and ``executions_per_trial`` through a real cluster: the
user's code runs on the workers, as KerasTuner runs it (issue 24, points 1 and 3)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import pytest

import tunecluster.keras_tuner as kt

from .dropin_digits import build_digits

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
sys.path.insert(0, str(Path(__file__).parent))


class TunesBatchSize(kt.HyperModel):
    """KerasTuner's getting-started example: fit tunes shuffle and batch_size."""

    def build(self, hp):
        return build_digits(hp)

    def fit(self, hp, model, *args, **kwargs):
        return model.fit(*args, shuffle=hp.Boolean("shuffle"),
                         batch_size=hp.Choice("batch_size", [32, 64]), **kwargs)


class ScoresItsOwnWay(TunesBatchSize):
    """Trains with Keras (epochs reported live) but returns a score of its own."""

    def fit(self, hp, model, *args, **kwargs):
        model.fit(*args, **kwargs)
        return {"val_accuracy": hp.get("units") / 100}


def test_a_hypermodels_fit_runs_on_the_workers(cluster, tmp_path: Path, monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.RandomSearch(TunesBatchSize(), objective="val_accuracy", max_trials=3,
                            seed=1, executions_per_trial=2, directory=tmp_path,
                            project_name="own-fit", cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=2, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    results = tuner.job.results()
    trials = [t for t in results["trials"] if t["state"] == "COMPLETED"]
    assert len(trials) == 3
    for trial in trials:
        # fit declared them: each trial records the values it trained with
        assert trial["hyperparameters"]["batch_size"] in (32, 64), trial
        assert isinstance(trial["hyperparameters"]["shuffle"], bool), trial
    # two executions per trial, the score the mean of their best epochs
    record = tuner.job.client.store.jobs.trial(tuner.job.id, trials[0]["trial"])
    assert json.loads(record["result"])["executions"] == 2
    best = tuner.get_best_hyperparameters(1)[0]
    assert "batch_size" in best.values
    # tuner.oracle and the tuner read as KerasTuner's do
    oracle = tuner.oracle
    assert oracle.max_trials == 3 and oracle.objective.name == "val_accuracy"
    # the space found at submit, grown by what fit declared, as KerasTuner's oracle holds it
    assert sorted(p.name for p in oracle.get_space().space) == ["batch_size", "shuffle",
                                                                 "units"]
    assert oracle.hyperparameters.get("units") is not None
    assert sorted(oracle.trials) == sorted(t["trial"] for t in trials)
    top = oracle.get_best_trials(1)[0]
    assert oracle.get_trial(top.trial_id).score == top.score
    assert top.hyperparameters.values["units"] == best.values["units"]
    model = tuner.load_model(top)
    assert model.layers[0].units == best.values["units"]
    assert Path(tuner.get_trial_dir(top.trial_id)).is_dir()
    assert tuner.project_dir == str(tmp_path / "own-fit")


def test_a_fit_that_returns_its_own_score_is_what_the_oracle_ranks(cluster, tmp_path: Path,
                                                                  monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.RandomSearch(ScoresItsOwnWay(), objective="val_accuracy", max_trials=3,
                            seed=3, directory=tmp_path, project_name="own-score",
                            cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    trials = [t for t in tuner.job.results()["trials"] if t["state"] == "COMPLETED"]
    assert len(trials) == 3
    for trial in trials:  # what fit returned, not the epochs' val_accuracy
        assert trial["score"] == pytest.approx(trial["hyperparameters"]["units"] / 100)
    # the chief's oracle holds the same scores: it ranks (and searches on) them
    _, oracle_trials = tuner.job.client.store.jobs.oracle_state(tuner.job.id)
    scores = {tid: json.loads(text).get("score") for tid, text in oracle_trials.items()}
    for trial in trials:
        assert scores[trial["trial"]] == pytest.approx(trial["score"]), scores
    best = tuner.oracle.get_best_trials(1)[0]
    assert best.score == max(t["score"] for t in trials)


class TunesBatchSizeInRunTrial(kt.RandomSearch):
    """KerasTuner's guide: a tuner whose run_trial tunes a fit argument, then trains
    through the base class's run_trial."""

    def run_trial(self, trial, *args, **kwargs):
        kwargs["batch_size"] = trial.hyperparameters.Choice("batch_size", [32, 64])
        self.calls = getattr(self, "calls", 0) + 1
        return super().run_trial(trial, *args, **kwargs)


class OwnScoring(kt.RandomSearch):
    """A run_trial that trains through self.hypermodel and scores its own way."""

    def __init__(self, *args, weight=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight = weight

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        model = self.hypermodel.build(hp)
        self.hypermodel.fit(hp, model, *args, **kwargs)
        return self.weight * hp.get("units")


def test_a_tuners_own_run_trial_runs_on_the_workers(cluster, tmp_path: Path,
                                                    monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = TunesBatchSizeInRunTrial(build_digits, objective="val_accuracy", max_trials=2,
                                     seed=4, executions_per_trial=2, directory=tmp_path,
                                     project_name="own-run-trial", cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=2, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    results = tuner.job.results()
    trials = [t for t in results["trials"] if t["state"] == "COMPLETED"]
    assert len(trials) == 2
    store = tuner.job.client.store
    for trial in trials:
        assert trial["hyperparameters"]["batch_size"] in (32, 64), trial  # run_trial's
        record = json.loads(store.jobs.trial(tuner.job.id, trial["trial"])["result"])
        assert record["executions"] == 2  # super().run_trial: executions_per_trial
        assert len(store.jobs.epochs(tuner.job.id, trial["trial"])) == 2  # live epochs
    assert tuner.get_best_models(1)[0].layers[0].units == \
        tuner.get_best_hyperparameters(1)[0].values["units"]


def test_a_run_trial_that_scores_its_own_way_is_ranked_by_it(cluster, tmp_path: Path,
                                                             monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = OwnScoring(build_digits, objective=kt.Objective("units_score", "max"),
                       max_trials=3, seed=5, weight=0.5, directory=tmp_path,
                       project_name="own-scoring", cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    trials = [t for t in tuner.job.results()["trials"] if t["state"] == "COMPLETED"]
    assert len(trials) == 3
    for trial in trials:  # the user's attribute (weight) travelled with its run_trial
        assert trial["score"] == pytest.approx(0.5 * trial["hyperparameters"]["units"])
    best = tuner.get_best_models(1)[0]  # the model run_trial trained is the trial's
    assert best.layers[0].units == max(t["hyperparameters"]["units"] for t in trials)


def build_subclassed(hp):
    class Net(keras.Model):  # defined inside build_model: Keras cannot serialize it
        def __init__(self, units):
            super().__init__()
            self.hidden = keras.layers.Dense(units, activation="relu")
            self.out = keras.layers.Dense(10, activation="softmax")

        def call(self, x):
            return self.out(self.hidden(x))

    model = Net(hp.Int("units", 8, 32, step=8))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def build_with_lambda(hp):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Lambda(lambda t: t / 16.0),
                              keras.layers.Dense(hp.Int("units", 8, 32, step=8),
                                                 activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@pytest.mark.parametrize("build", [build_subclassed, build_with_lambda])
def test_models_keras_cannot_deserialize_come_back_rebuilt(cluster, tmp_path: Path,
                                                          monkeypatch, build) -> None:
    """The search used to fail at its end (the chief could not load the best model to
    score it on the test split) and get_best_models with it (issue 24, point 4): now the
    model is rebuilt by the hypermodel and given the trial's weights, as in KerasTuner."""
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.RandomSearch(build, objective="val_accuracy", max_trials=2, seed=6,
                            directory=tmp_path, project_name=build.__name__,
                            cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=2, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    results = tuner.job.results()
    assert results["state"] == "completed" and results["test"]["accuracy"] > 0.2
    best = tuner.get_best_models(1)[0]
    _, accuracy = best.evaluate(example.X_valid, example.y_valid, verbose=0)
    # the test split of a drop-in job is its validation data: the same score
    assert accuracy == pytest.approx(results["test"]["accuracy"], abs=1e-6)


def test_compile_overrides_reach_the_workers(cluster, tmp_path: Path, monkeypatch) -> None:
    """Tuner(optimizer=, loss=, metrics=), as KerasTuner: every trial's model is compiled
    again with them; the objective may be a metric only the override adds."""
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.RandomSearch(build_digits, objective=kt.Objective(
                                "val_sparse_top_k_categorical_accuracy", "max"),
                            max_trials=1, optimizer=keras.optimizers.SGD(learning_rate=0.05),
                            metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=3)],
                            directory=tmp_path, project_name="overrides", cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    trial = tuner.job.results()["trials"][0]
    assert trial["state"] == "COMPLETED"
    assert trial["score"] == trial["metrics"]["val_sparse_top_k_categorical_accuracy"]
    model = tuner.get_best_models(1)[0]
    assert type(model.optimizer).__name__ == "SGD"


def test_the_base_tuner_with_an_oracle_object_searches(cluster, tmp_path: Path,
                                                       monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    oracle = kt.oracles.GridSearchOracle(objective=kt.Objective("val_accuracy", "max"),
                                         max_trials=2)
    tuner = kt.Tuner(oracle=oracle, hypermodel=build_digits, directory=tmp_path,
                     project_name="base-tuner", cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    trials = tuner.job.results()["trials"]
    # the grid's first two points, as KerasTuner's GridSearchOracle walks it
    assert sorted(t["hyperparameters"]["units"] for t in trials) == [8, 16]


def test_a_tf_data_search_with_class_weights(cluster, tmp_path: Path, monkeypatch) -> None:
    import dropin_notebook_style as example
    import tensorflow as tf

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    train = tf.data.Dataset.from_tensor_slices((example.X_train, example.y_train)).batch(16)
    valid = tf.data.Dataset.from_tensor_slices((example.X_valid, example.y_valid)).batch(64)
    tuner = kt.RandomSearch(build_digits, objective="val_accuracy", max_trials=1,
                            directory=tmp_path, project_name="tf-data", cluster=cluster.url)
    tuner.search(train, validation_data=valid, epochs=1, verbose=0,
                 class_weight={k: 1.0 for k in range(10)})
    record = tuner.job.record()
    assert record.spec["train"]["batch_size"] == 16  # the dataset's batches
    assert record.spec["train"]["class_weight"] == {str(k): 1.0 for k in range(10)}
    assert tuner.job.results()["state"] == "completed"


def test_a_multi_objective_search(cluster, tmp_path: Path, monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.RandomSearch(build_digits, objective=["val_loss", "val_accuracy"],
                            max_trials=2, directory=tmp_path, project_name="multi",
                            cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=2, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    results = tuner.job.results()
    assert results["objective"] == {"name": "multi_objective", "direction": "min"}
    for trial in results["trials"]:  # KerasTuner's sum: losses as they are, accuracy negated
        metrics = trial["metrics"]
        assert trial["score"] == pytest.approx(metrics["val_loss"] - metrics["val_accuracy"])
    best = min(results["trials"], key=lambda t: t["score"])
    assert tuner.oracle.get_best_trials(1)[0].trial_id == best["trial"]
    # the Pareto front: exactly the trials no other beats on both parts
    points = {t["trial"]: (t["metrics"]["val_loss"], -t["metrics"]["val_accuracy"])
              for t in results["trials"] if t["state"] == "COMPLETED"}
    assert results["pareto"], results
    for trial, p in points.items():
        beaten = any(all(a <= b for a, b in zip(q, p, strict=True)) and q != p
                     for q in points.values())
        assert (trial in results["pareto"]) == (not beaten), (trial, points, results["pareto"])


class HalvesItsScore(kt.RandomSearch):
    """AutoKeras's hook: a tuner's own _build_and_fit_model, around the base class's."""

    def _build_and_fit_model(self, trial, *args, **kwargs):
        history = super()._build_and_fit_model(trial, *args, **kwargs)
        return {"val_accuracy": max(history.history["val_accuracy"]) / 2}


def test_a_tuners_own_build_and_fit_model_runs_on_the_workers(cluster, tmp_path: Path,
                                                              monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = HalvesItsScore(build_digits, objective="val_accuracy", max_trials=1,
                           directory=tmp_path, project_name="build-and-fit",
                           cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=2, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    trial = tuner.job.results()["trials"][0]
    epochs = tuner.job.client.store.jobs.epochs(tuner.job.id, trial["trial"])
    assert len(epochs) == 2  # the worker's reporter rode along in the callbacks
    best = max(m["val_accuracy"] for m in epochs.values())
    assert trial["score"] == pytest.approx(best / 2)


class Quadratic(kt.RandomSearch):
    """KerasTuner's run_trial as a black-box optimizer: no model, no data."""

    def run_trial(self, trial, *args, **kwargs):
        x = trial.hyperparameters.Float("x", -2.0, 2.0)
        return {"score": x * x + 2 * x + 1}


def test_a_black_box_search_without_model_or_data(cluster, tmp_path: Path,
                                                  monkeypatch) -> None:
    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = Quadratic(objective=kt.Objective("score", "min"), max_trials=4, seed=2,
                      directory=tmp_path, project_name="black-box", cluster=cluster.url)
    tuner.search()
    results = tuner.job.results()
    assert results["state"] == "completed" and results["test"] is None
    trials = [t for t in results["trials"] if t["state"] == "COMPLETED"]
    assert len(trials) == 4
    for trial in trials:  # (x + 1)^2, what run_trial returned
        x = trial["hyperparameters"]["x"]
        assert trial["score"] == pytest.approx((x + 1) ** 2, abs=1e-6)
    best = tuner.get_best_hyperparameters(1)[0]
    assert best.values["x"] == min(trials, key=lambda t: t["score"])["hyperparameters"]["x"]
    with pytest.raises(Exception, match="trained no model"):
        tuner.get_best_models(1)


class TwoSwitches(kt.BayesianOptimization):
    """A black box whose whole space (two Booleans: 4 points) is declared by run_trial."""

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        return float(hp.Boolean("left")) + 2 * float(hp.Boolean("right"))


def test_a_search_ends_when_its_space_is_exhausted(cluster, tmp_path: Path,
                                                  monkeypatch) -> None:
    """max_trials is 10, the space holds 4 points: the search runs each once and ends,
    as KerasTuner's does (its oracle answers STOPPED when it finds no new point)."""
    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = TwoSwitches(objective=kt.Objective("score", "max"), max_trials=10, seed=3,
                        directory=tmp_path, project_name="two-switches",
                        cluster=cluster.url)
    tuner.search()
    trials = tuner.job.results()["trials"]
    points = sorted((t["hyperparameters"]["left"], t["hyperparameters"]["right"])
                    for t in trials)
    assert points == [(False, False), (False, True), (True, False), (True, True)], trials
    assert all(t["state"] == "COMPLETED" for t in trials)
    assert len(tuner.oracle.trials) == 4
    assert tuner.get_best_hyperparameters(1)[0].values == {"left": True, "right": True}


class FailsFirst(kt.RandomSearch):
    """A black box whose first trial fails on purpose, after declaring its space."""

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        x = hp.Int("x", 0, 50)
        if self.oracle.start_order == [trial.trial_id]:  # the first trial started
            raise kt.errors.FailedTrialError("the first trial fails on purpose")
        return {"score": float(x)}


def test_a_trial_failed_on_purpose_is_skipped_and_its_space_kept(cluster, tmp_path: Path,
                                                                monkeypatch) -> None:
    """KerasTuner skips a trial whose run_trial raises FailedTrialError and grows the
    space with what it declared: the search goes on to max_trials over that space.
    (Before, the failed trial's space was lost: every later trial had the same empty
    values and the search ended after one.)"""
    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = FailsFirst(objective=kt.Objective("score", "max"), max_trials=5, seed=4,
                       directory=tmp_path, project_name="fails-first", cluster=cluster.url)
    tuner.search()
    trials = {t["trial"]: t for t in tuner.job.results()["trials"]}
    assert len(trials) == 5, trials
    failed = [t for t in trials.values() if t["state"] == "FAILED"]
    assert len(failed) == 1 and "on purpose" in (failed[0].get("error") or ""), failed
    assert "x" in failed[0]["hyperparameters"]  # what it declared before failing
    scores = {t["hyperparameters"]["x"] for t in trials.values() if t["state"] == "COMPLETED"}
    assert len(scores) == 4  # four different points of the space it declared
    assert [p.name for p in tuner.oracle.get_space().space] == ["x"]


def test_a_tensorboard_callback_gets_every_trial_with_its_epochs_and_values(
        cluster, tmp_path: Path, monkeypatch) -> None:
    """KerasTuner's guide to visualizing a search: ``search(callbacks=[TensorBoard(dir)])``
    then ``tensorboard --logdir dir``. On the cluster the trials run elsewhere; the search
    writes them there from the records when it ends: one run per trial, each epoch's
    metrics, the HParams view with the trial's values."""
    import dropin_notebook_style as example
    from tensorboard.backend.event_processing.event_accumulator import (
        TENSORS,
        EventAccumulator,
    )
    from tensorboard.util.tensor_util import make_ndarray

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    logdir = tmp_path / "tb_logs"
    tuner = kt.RandomSearch(build_digits, objective="val_accuracy", max_trials=2, seed=3,
                            directory=tmp_path, project_name="tb", cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=2, verbose=0,
                 validation_data=(example.X_valid, example.y_valid),
                 callbacks=[keras.callbacks.TensorBoard(str(logdir))])

    trials = {t["trial"]: t for t in tuner.job.results()["trials"]}
    assert len(trials) == 2 and sorted(p.name for p in logdir.iterdir()
                                       if p.is_dir()) == sorted(trials)
    for trial_id, trial in trials.items():
        acc = EventAccumulator(str(logdir / trial_id), size_guidance={TENSORS: 0})
        acc.Reload()
        recorded = tuner.job.client.store.jobs.epochs(tuner.job.id, trial_id)
        written = {e.step: float(make_ndarray(e.tensor_proto))
                   for e in acc.Tensors("val_accuracy")}
        assert written == pytest.approx({epoch: row["val_accuracy"]
                                         for epoch, row in recorded.items()})
        assert sorted(written) == [1, 2]
        assert "_hparams_/session_start_info" in acc.Tags()[TENSORS]
        assert trial["hyperparameters"]["units"] in (8, 16, 24, 32)
    assert list(logdir.glob("events.out.tfevents.*"))  # the experiment: the space's domains


def cluster_store(cluster):  # noqa: ANN001, ANN201 - the shared cluster's store
    from tunecluster.store import Store

    return Store.from_url(cluster.url)
