"""A module model's ``build_model(hp, data)`` adapts on the trial's training split
(issue 30), through real processes: the shared cluster runs
``examples/regression_module.yaml``; the Normalization statistics saved in a trial's
model (adapted on a worker) and in the exported best model (the one the chief scored on
the test split) are those of the training split, not of train+valid nor of test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunecluster.artifacts import trial_model
from tunecluster.data import load_splits
from tunecluster.spec import load_spec_file

from .conftest import EXAMPLES, run_job

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

OVERRIDES = ("search.max_trials=2", "train.epochs=2", "search.algorithm=random")


def _normalization(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import keras

    model = keras.models.load_model(path)
    layer = next(la for la in model.layers if isinstance(la, keras.layers.Normalization))
    return (np.asarray(layer.mean).reshape(-1), np.asarray(layer.variance).reshape(-1))


def test_build_model_hp_data_adapts_on_the_training_split(cluster, store) -> None:
    results = run_job(store, EXAMPLES / "regression_module.yaml", *OVERRIDES)
    assert results["state"] == "completed", results.get("error")
    assert results["test"] and "rmse" in results["test"], results["test"]
    spec = load_spec_file(EXAMPLES / "regression_module.yaml", OVERRIDES)
    splits = load_splits(spec.data, "regression")
    train_mean, train_var = splits.x_train.mean(axis=0), splits.x_train.var(axis=0)
    both = np.concatenate([splits.x_train, splits.x_valid])
    root, job = Path(cluster.artifacts), results["job"]
    saved = [trial_model(root, job, t["trial"], t.get("model"))
             for t in results["trials"] if t["state"] == "COMPLETED"]
    assert saved and all(p.is_file() for p in saved)
    for path in [*saved, root / job / "best_model.keras"]:
        mean, var = _normalization(path)
        np.testing.assert_allclose(mean, train_mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(var, train_var, rtol=1e-3, atol=1e-6)
        assert not np.allclose(mean, both.mean(axis=0), rtol=1e-4, atol=1e-6)
        assert not np.allclose(mean, splits.x_test.mean(axis=0), rtol=1e-4, atol=1e-6)
