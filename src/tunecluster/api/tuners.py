"""KerasTuner's four tuners on the cluster: each one ``Tuner`` whose job names its
algorithm (the oracle the chief hosts) and the settings that algorithm takes."""

from __future__ import annotations

from typing import Any

from tunecluster.api.keras_tuner import Tuner


class RandomSearch(Tuner):
    """``keras_tuner.RandomSearch`` on the cluster."""

    algorithm = "random"


class GridSearch(Tuner):
    """``keras_tuner.GridSearch`` on the cluster (``max_trials=None``: the whole grid)."""

    algorithm = "grid"

    def __init__(self, hypermodel: Any = None, objective: Any = None,
                 max_trials: int | None = None, **kwargs: Any) -> None:
        super().__init__(hypermodel, objective, max_trials, **kwargs)


class BayesianOptimization(Tuner):
    """``keras_tuner.BayesianOptimization`` on the cluster."""

    algorithm = "bayesian"

    def __init__(self, hypermodel: Any = None, objective: Any = None, max_trials: int = 10,
                 num_initial_points: int | None = None, alpha: float = 1e-4,
                 beta: float = 2.6, **kwargs: Any) -> None:
        self.num_initial_points = num_initial_points
        self.alpha, self.beta = alpha, beta
        super().__init__(hypermodel, objective, max_trials, **kwargs)

    def _search_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"bayesian_alpha": self.alpha, "bayesian_beta": self.beta}
        if self.num_initial_points:
            extra["num_initial_points"] = self.num_initial_points
        return extra


class Hyperband(Tuner):
    """``keras_tuner.Hyperband`` on the cluster: ``max_epochs`` replaces ``search(epochs=)``."""

    algorithm = "hyperband"

    def __init__(self, hypermodel: Any = None, objective: Any = None, max_epochs: int = 100,
                 factor: int = 3, hyperband_iterations: int = 1, **kwargs: Any) -> None:
        self.max_epochs = max_epochs
        self.factor = factor
        self.hyperband_iterations = hyperband_iterations
        kwargs.setdefault("max_trials", None)
        super().__init__(hypermodel, objective, **kwargs)

    def _search_extra(self) -> dict[str, Any]:
        return {"hyperband_factor": self.factor,
                "hyperband_iterations": self.hyperband_iterations}

    def _epochs(self, epochs: int) -> int:
        return self.max_epochs
