"""Keras's sample weights through the drop-in and a real cluster (issue 24): the rows'
weights travel with them, the workers' training and validation weigh them, and a
HyperModel's own fit is given them as Keras's fit would be."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import tunecluster.keras_tuner as kt

from .dropin_digits import build_digits

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
sys.path.insert(0, str(Path(__file__).parent))


class PassesThemOn(kt.HyperModel):
    def build(self, hp):
        return build_digits(hp)

    def fit(self, hp, model, *args, **kwargs):
        assert len(kwargs["sample_weight"]) == len(args[0])  # as search() was given them
        assert len(kwargs["validation_data"]) == 3
        return model.fit(*args, **kwargs)


@pytest.mark.parametrize("hypermodel", [build_digits, PassesThemOn()],
                         ids=["keras-fit", "hypermodel-fit"])
def test_sample_weights_weigh_the_workers_training_and_validation(
        cluster, tmp_path: Path, monkeypatch, hypermodel) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.RandomSearch(hypermodel, objective="val_loss", max_trials=2, seed=3,
                            directory=tmp_path, project_name="weights", cluster=cluster.url)
    weights = np.where(example.y_train % 2 == 0, 2.0, 0.5)
    tuner.search(example.X_train, example.y_train, epochs=1, verbose=0,
                 sample_weight=weights,
                 validation_data=(example.X_valid, example.y_valid,
                                  np.zeros(len(example.y_valid))))
    trials = [t for t in tuner.job.results()["trials"] if t["state"] == "COMPLETED"]
    assert len(trials) == 2
    for trial in trials:
        # every validation row weighs 0: Keras's weighted loss is 0; training's is not
        assert trial["metrics"]["val_loss"] == 0.0, trial
        assert trial["metrics"]["loss"] > 0, trial
