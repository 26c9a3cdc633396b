"""What a drop-in tuner prints, as KerasTuner prints it: its best trials and its space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keras_tuner import HyperParameters


def print_results(tuner: Any, num_trials: int) -> None:
    """``Tuner.results_summary``: the best ``num_trials`` trials, best first."""
    print("Results summary")
    print(f"Results in {Path(tuner.directory, tuner.project_name)}"
          + (f" (job {tuner.job.id})" if tuner.job else ""))
    print(f"Showing {num_trials} best trials")
    print(f'Objective(name="{tuner.objective.name}", direction="{tuner.objective.direction}")')
    for trial in tuner.oracle.get_best_trials(num_trials):
        print()
        trial.summary()


def print_space(space: dict[str, Any]) -> None:
    """``Tuner.search_space_summary``: each hyperparameter and its settings."""
    hp = HyperParameters.from_config(space)
    print("Search space summary")
    print(f"Default search space size: {len(hp.space)}")
    for p in hp.space:
        config = p.get_config()
        name = config.pop("name")
        print(f"{name} ({p.__class__.__name__})")
        print(config)
