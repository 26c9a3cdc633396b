"""KerasTuner's four tuners on the cluster, each built as KerasTuner builds it: one of its
oracle objects (whose configuration becomes the job's search settings; the chief hosts
the same oracle) handed to ``Tuner``."""

from __future__ import annotations

from typing import Any

from keras_tuner import oracles

from tunecluster.api import tuner_inputs as inputs
from tunecluster.api.keras_tuner import Tuner
from tunecluster.engine.asha_oracle import AshaOracle
from tunecluster.engine.pbt_oracle import PbtOracle
from tunecluster.engine.tpe_asha_oracle import TpeAshaOracle
from tunecluster.engine.tpe_oracle import TPEOracle


def _common(objective: Any, seed: int | None, hyperparameters: Any, tune_new_entries: bool,
            allow_new_entries: bool, max_retries_per_trial: int,
            max_consecutive_failed_trials: int) -> dict[str, Any]:
    """An oracle's common arguments; the objective checked here (a one-line error that
    says how to give its direction), not by KerasTuner's oracle. None stays None: the
    tuner picks the default (``tuner_inputs.objective``)."""
    return {"objective": None if objective is None else inputs.objective(objective),
            "seed": seed,
            "hyperparameters": hyperparameters, "tune_new_entries": tune_new_entries,
            "allow_new_entries": allow_new_entries,
            "max_retries_per_trial": max_retries_per_trial,
            "max_consecutive_failed_trials": max_consecutive_failed_trials}


class RandomSearch(Tuner):
    """``keras_tuner.RandomSearch`` on the cluster."""

    def __init__(self, hypermodel: Any = None, objective: Any = None,
                 max_trials: int | None = 10, seed: int | None = None,
                 hyperparameters: Any = None, tune_new_entries: bool = True,
                 allow_new_entries: bool = True, max_retries_per_trial: int = 0,
                 max_consecutive_failed_trials: int = 3, **kwargs: Any) -> None:
        oracle = oracles.RandomSearchOracle(max_trials=max_trials, **_common(
            objective, seed, hyperparameters, tune_new_entries, allow_new_entries,
            max_retries_per_trial, max_consecutive_failed_trials))
        super().__init__(oracle, hypermodel, **kwargs)


class GridSearch(Tuner):
    """``keras_tuner.GridSearch`` on the cluster (``max_trials=None``: the whole grid)."""

    def __init__(self, hypermodel: Any = None, objective: Any = None,
                 max_trials: int | None = None, seed: int | None = None,
                 hyperparameters: Any = None, tune_new_entries: bool = True,
                 allow_new_entries: bool = True, max_retries_per_trial: int = 0,
                 max_consecutive_failed_trials: int = 3, **kwargs: Any) -> None:
        oracle = oracles.GridSearchOracle(max_trials=max_trials, **_common(
            objective, seed, hyperparameters, tune_new_entries, allow_new_entries,
            max_retries_per_trial, max_consecutive_failed_trials))
        super().__init__(oracle, hypermodel, **kwargs)


class BayesianOptimization(Tuner):
    """``keras_tuner.BayesianOptimization`` on the cluster."""

    def __init__(self, hypermodel: Any = None, objective: Any = None, max_trials: int = 10,
                 num_initial_points: int | None = None, alpha: float = 1e-4,
                 beta: float = 2.6, seed: int | None = None, hyperparameters: Any = None,
                 tune_new_entries: bool = True, allow_new_entries: bool = True,
                 max_retries_per_trial: int = 0, max_consecutive_failed_trials: int = 3,
                 **kwargs: Any) -> None:
        oracle = oracles.BayesianOptimizationOracle(
            max_trials=max_trials, num_initial_points=num_initial_points, alpha=alpha,
            beta=beta, **_common(objective, seed, hyperparameters, tune_new_entries,
                                 allow_new_entries, max_retries_per_trial,
                                 max_consecutive_failed_trials))
        super().__init__(oracle, hypermodel, **kwargs)


class Hyperband(Tuner):
    """``keras_tuner.Hyperband`` on the cluster: ``max_epochs`` replaces ``search(epochs=)``."""

    def __init__(self, hypermodel: Any = None, objective: Any = None, max_epochs: int = 100,
                 factor: int = 3, hyperband_iterations: int = 1, seed: int | None = None,
                 hyperparameters: Any = None, tune_new_entries: bool = True,
                 allow_new_entries: bool = True, max_retries_per_trial: int = 0,
                 max_consecutive_failed_trials: int = 3, **kwargs: Any) -> None:
        oracle = oracles.HyperbandOracle(
            max_epochs=max_epochs, factor=factor, hyperband_iterations=hyperband_iterations,
            **_common(objective, seed, hyperparameters, tune_new_entries, allow_new_entries,
                      max_retries_per_trial, max_consecutive_failed_trials))
        super().__init__(oracle, hypermodel, **kwargs)


class TPE(Tuner):
    """Optuna's TPE sampler on the cluster (``search.algorithm: tpe``), with the
    arguments of KerasTuner's tuners; ``num_initial_points`` random trials come first
    (optuna's ``n_startup_trials``). The chief needs ``pip install 'tunecluster[tpe]'``."""

    def __init__(self, hypermodel: Any = None, objective: Any = None, max_trials: int = 10,
                 num_initial_points: int = 10, seed: int | None = None,
                 hyperparameters: Any = None, tune_new_entries: bool = True,
                 allow_new_entries: bool = True, max_retries_per_trial: int = 0,
                 max_consecutive_failed_trials: int = 3, **kwargs: Any) -> None:
        oracle = TPEOracle(max_trials=max_trials, num_initial_points=num_initial_points,
                           **_common(objective, seed, hyperparameters, tune_new_entries,
                                     allow_new_entries, max_retries_per_trial,
                                     max_consecutive_failed_trials))
        super().__init__(oracle, hypermodel, **kwargs)


class ASHA(Tuner):
    """Asynchronous successive halving on the cluster (``search.algorithm: asha``), with
    the arguments of KerasTuner's Hyperband: ``max_epochs`` replaces ``search(epochs=)``;
    ``max_trials`` configurations run to ``min_epochs``, and the top ``1/factor`` of
    each rung go on (``min_epochs * factor**k`` epochs, then ``max_epochs``), continued
    from their model where it stopped. ``sampler="tpe"``: new configurations come from
    TPE over the first rung's scores (a BOHB-like search), ``num_initial_points`` drawn
    at random first."""

    def __init__(self, hypermodel: Any = None, objective: Any = None, max_trials: int = 10,
                 max_epochs: int = 100, min_epochs: int = 1, factor: int = 3,
                 sampler: str = "random", num_initial_points: int = 10,
                 seed: int | None = None, hyperparameters: Any = None,
                 tune_new_entries: bool = True, allow_new_entries: bool = True,
                 max_retries_per_trial: int = 0, max_consecutive_failed_trials: int = 3,
                 **kwargs: Any) -> None:
        if sampler not in ("random", "tpe"):
            raise ValueError(f"ASHA: sampler must be 'random' or 'tpe', got {sampler!r}")
        common = _common(objective, seed, hyperparameters, tune_new_entries,
                         allow_new_entries, max_retries_per_trial,
                         max_consecutive_failed_trials)
        oracle = AshaOracle(max_epochs=max_epochs, min_epochs=min_epochs, factor=factor,
                            max_configs=max_trials, **common) if sampler == "random" else \
            TpeAshaOracle(max_epochs=max_epochs, min_epochs=min_epochs, factor=factor,
                          max_configs=max_trials, num_initial_points=num_initial_points,
                          **common)
        super().__init__(oracle, hypermodel, **kwargs)


class PBT(Tuner):
    """Population-based training on the cluster (``search.algorithm: pbt``):
    ``population`` members train ``interval`` epochs at a time up to ``max_epochs``
    (which replaces ``search(epochs=)``); then the bottom ``quantile`` continue from a
    top member's weights with its float hyperparameters perturbed."""

    def __init__(self, hypermodel: Any = None, objective: Any = None, max_epochs: int = 10,
                 population: int = 4, interval: int = 1, quantile: float = 0.25,
                 seed: int | None = None, hyperparameters: Any = None,
                 tune_new_entries: bool = True, allow_new_entries: bool = True,
                 max_retries_per_trial: int = 0, max_consecutive_failed_trials: int = 3,
                 **kwargs: Any) -> None:
        oracle = PbtOracle(max_epochs=max_epochs, population=population, interval=interval,
                           quantile=quantile,
                           **_common(objective, seed, hyperparameters, tune_new_entries,
                                     allow_new_entries, max_retries_per_trial,
                                     max_consecutive_failed_trials))
        super().__init__(oracle, hypermodel, **kwargs)
