"""The drop-in beyond RandomSearch: Hyperband, and a regression whose ``build_model``
adapts a ``Normalization`` layer on the training array read as a notebook global."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split

import tunecluster.keras_tuner as kt

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
sys.path.insert(0, str(Path(__file__).parent))

# Notebook-style globals: build_model reads X_reg_train (adapt) and HIDDEN.
_diabetes = load_diabetes()
X_reg_train, X_reg_valid, y_reg_train, y_reg_valid = train_test_split(
    _diabetes.data.astype("float32"), _diabetes.target.astype("float32"), test_size=0.25,
    random_state=0)
HIDDEN = 8


def build_regressor(hp):
    norm = keras.layers.Normalization()
    norm.adapt(X_reg_train)
    model = keras.Sequential([keras.Input(shape=X_reg_train.shape[1:]), norm,
                              keras.layers.Dense(HIDDEN, activation="relu"),
                              keras.layers.Dense(1)])
    lr = hp.Float("learning_rate", min_value=1e-2, max_value=1e-1, sampling="log")
    model.compile(loss="mse", optimizer=keras.optimizers.Adam(learning_rate=lr),
                  metrics=["mae"])
    return model


def test_hyperband_on_the_shared_cluster(cluster, tmp_path: Path, monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    start = time.monotonic()
    tuner = kt.Hyperband(example.build_model, objective="val_accuracy", max_epochs=2,
                         factor=2, seed=1, directory=tmp_path, project_name="hyperband",
                         overwrite=True, cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, validation_data=(example.X_valid,
                                                                     example.y_valid),
                 verbose=0)
    results = tuner.job.results()
    assert results["state"] == "completed"
    assert tuner.job.record().spec["search"]["algorithm"] == "hyperband"
    trials = [t for t in results["trials"] if t["state"] == "COMPLETED"]
    # Hyperband's brackets: some trials train 1 epoch, the promoted / top bracket 2.
    budgets = {t["tuner"]["tuner/epochs"] for t in trials}
    assert budgets == {1, 2}, results["trials"]
    assert len(trials) >= 3
    best_hp = tuner.get_best_hyperparameters(1)[0]
    assert "tuner/epochs" in best_hp.values and "n_neurons" in best_hp.values
    model = tuner.get_best_models(1)[0]
    scores = model.evaluate(example.X_valid, example.y_valid, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(results["best"]["score"], abs=1e-6)
    print(f"hyperband: {len(trials)} trials in {time.monotonic() - start:.1f}s")


def test_regression_adapts_on_a_notebook_global(cluster, tmp_path: Path,
                                                monkeypatch) -> None:
    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    start = time.monotonic()
    tuner = kt.RandomSearch(build_regressor, objective="val_loss", max_trials=2, seed=3,
                            directory=tmp_path, project_name="diabetes", overwrite=True,
                            cluster=cluster.url)
    tuner.search(X_reg_train, y_reg_train, epochs=3, batch_size=32, verbose=0,
                 validation_data=(X_reg_valid, y_reg_valid))
    results = tuner.job.results()
    assert results["state"] == "completed"
    assert tuner.job.record().spec["model"]["task"] == "regression"
    assert results["objective"] == {"name": "val_loss", "direction": "min"}
    model = tuner.get_best_models(1)[0]
    # The worker adapted the layer on the array that travelled with the hypermodel.
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    np.testing.assert_allclose(np.ravel(norm.mean), X_reg_train.mean(axis=0), rtol=1e-4,
                               atol=1e-6)
    loss = model.evaluate(X_reg_valid, y_reg_valid, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(results["best"]["score"], rel=1e-4)
    assert math.isfinite(results["best"]["score"]) and results["best"]["score"] > 0
    print(f"regression: {time.monotonic() - start:.1f}s")


def build_per_layer(hp):
    """KerasTuner's conditional pattern: the units of layer i exist only in trials with
    more than i layers, so the space found at submit (the defaults: 1 layer) lacks them."""
    model = keras.Sequential([keras.Input(shape=(64,))])
    for i in range(hp.Int("num_layers", 1, 3)):
        model.add(keras.layers.Dense(hp.Int(f"units_{i}", 8, 64, step=8), activation="relu",
                                     name=f"hidden_{i}"))
    model.add(keras.layers.Dense(10, activation="softmax"))
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam",
                  metrics=["accuracy"])
    return model


def test_hyperparameters_declared_in_some_trials_are_searched(cluster, tmp_path: Path,
                                                              monkeypatch) -> None:
    import dropin_notebook_style as example

    from tunecluster.store import Store

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.RandomSearch(build_per_layer, objective="val_accuracy", max_trials=8, seed=2,
                            directory=tmp_path, project_name="per-layer", overwrite=True,
                            cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    results = tuner.job.results()
    assert results["state"] == "completed"
    trials = [t for t in results["trials"] if t["state"] == "COMPLETED"]
    assert len(trials) == 8
    # The space grew as a trial with more layers ended: the oracle drew units_1 itself
    # for the trials it made afterwards (before the fix: never; each took its minimum).
    created = [e.data["values"] for e in Store.from_url(cluster.url).events.read(tuner.job.id)
               if e.type == "trial_created"]
    assert any("units_1" in values for values in created), created
    assert len({t["hyperparameters"].get("units_1") for t in trials} - {None}) > 1
    # Each trial records every value its model was built with.
    for t in trials:
        hps = t["hyperparameters"]
        model = keras.models.load_model(cluster.artifacts / t["model"])
        for i in range(hps["num_layers"]):
            assert model.get_layer(f"hidden_{i}").units == hps[f"units_{i}"], (t, i)
    # The best hyperparameters rebuild the best model, conditional entries included.
    best_hp = tuner.get_best_hyperparameters(1)[0]
    rebuilt, best = build_per_layer(best_hp), tuner.get_best_models(1)[0]
    assert ([layer.units for layer in rebuilt.layers]
            == [layer.units for layer in best.layers])
