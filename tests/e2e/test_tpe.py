"""TPE (Optuna's sampler behind the chief's oracle interface) through a real cluster: a
job file's ``algorithm: tpe`` and the drop-in's ``TPE`` tuner both complete, every
trial final exactly once, with a best score."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import tunecluster.keras_tuner as kt
from tunecluster.store import Store

from .conftest import EXAMPLES, run_job
from .invariants import assert_exactly_once

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
sys.path.insert(0, str(Path(__file__).parent))

# 6 trials, the first 2 random, then TPE's; one small layer, 2 epochs each.
TPE = ("search.algorithm=tpe", "search.max_trials=6", "search.tpe_startup_trials=2",
       "train.epochs=2", "train.early_stopping=null",
       "model.hyperparameters.n_hidden={fixed: 1}",
       "model.hyperparameters.n_neurons={int: [8, 32], sampling: log}")


def test_a_tpe_job_completes_every_trial_once(store: Store) -> None:
    results = run_job(store, EXAMPLES / "digits.yaml", *TPE)
    assert results["state"] == "completed", results.get("error")
    rows = assert_exactly_once(store, results["job"], 6)
    assert all(row["state"] == "COMPLETED" for row in rows)
    scores = [t["score"] for t in results["trials"]]
    assert results["best"]["score"] == max(scores) and 0 < max(scores) <= 1
    values = {json.dumps(t["hyperparameters"], sort_keys=True) for t in results["trials"]}
    assert len(values) == 6  # no configuration drawn twice
    for trial in results["trials"]:
        hp = trial["hyperparameters"]
        assert hp["n_hidden"] == 1 and 8 <= hp["n_neurons"] <= 32
        assert 1e-4 <= hp["learning_rate"] <= 1e-2 and hp["optimizer"] in ("sgd", "adam")
    # the oracle the chief persisted is KerasTuner's state as JSON: no study travels
    state, _trials = store.jobs.oracle_state(results["job"])
    assert json.loads(state)["num_initial_points"] == 2


def test_the_drop_in_tpe_tuner_searches_on_the_cluster(cluster, tmp_path: Path,
                                                       monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.TPE(example.build_model, objective="val_accuracy", max_trials=4,
                   num_initial_points=2, seed=1, directory=tmp_path, project_name="tpe",
                   overwrite=True, cluster=cluster.url)
    tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                 validation_data=(example.X_valid, example.y_valid))
    results = tuner.job.results()
    assert results["state"] == "completed", results.get("error")
    search = tuner.job.record().spec["search"]
    assert search["algorithm"] == "tpe" and search["tpe_startup_trials"] == 2
    rows = assert_exactly_once(Store.from_url(cluster.url), tuner.job.id, 4)
    assert all(row["state"] == "COMPLETED" for row in rows)
    best = tuner.get_best_models(1)[0]
    scores = best.evaluate(example.X_valid, example.y_valid, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(results["best"]["score"], abs=1e-6)
