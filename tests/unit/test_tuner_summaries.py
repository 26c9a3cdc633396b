"""The drop-in's search_space_summary prints the space as KerasTuner prints it."""

from __future__ import annotations

import pytest
from keras_tuner import HyperParameters

from tunecluster.api.tuner_summaries import print_space


def test_the_space_summary_names_each_hyperparameter_with_its_settings(
        capsys: pytest.CaptureFixture[str]) -> None:
    hp = HyperParameters()
    hp.Int("units", 8, 64, step=8)
    hp.Choice("optimizer", ["sgd", "adam"])

    print_space(hp.get_config())

    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["Search space summary", "Default search space size: 2", "units (Int)"]
    assert "'min_value': 8" in lines[3] and "'max_value': 64" in lines[3]
    assert lines[4] == "optimizer (Choice)" and "'values': ['sgd', 'adam']" in lines[5]
