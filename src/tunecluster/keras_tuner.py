"""Drop-in KerasTuner tuners that run on a tunecluster cluster.

``import tunecluster.keras_tuner as kt`` instead of ``import keras_tuner as kt``; the rest
of the code stays. See ``tunecluster.api.keras_tuner``.
"""

# KerasTuner's own modules that hold no tuner (``kt.errors.FailedTrialError``, the
# oracles, the ready-made hypermodels), as ``keras_tuner`` offers them
from keras_tuner import Oracle, applications, errors, oracles

from tunecluster.api import tuners  # kt.tuners.RandomSearch, as KerasTuner offers them
from tunecluster.api.keras_tuner import HyperModel, HyperParameters, Objective, Tuner
from tunecluster.api.tuners import (
    ASHA,
    PBT,
    TPE,
    BayesianOptimization,
    GridSearch,
    Hyperband,
    RandomSearch,
)

__all__ = ["ASHA", "TPE", "BayesianOptimization", "GridSearch", "HyperModel", "HyperParameters",
           "Hyperband", "Objective", "Oracle", "PBT", "RandomSearch", "Tuner", "applications",
           "errors", "oracles", "tuners"]
