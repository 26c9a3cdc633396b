"""Hypermodels: the course's builtin MLPs and users' own ``build_model(hp)``."""

from tunecluster.models.builtin import (
    DEFAULTS,
    NormalizationStats,
    adapt_normalization,
    build_mlp,
)
from tunecluster.models.custom import (
    ModelCodeError,
    build_checked,
    load_build_function,
    user_objects,
)

__all__ = [
    "DEFAULTS",
    "ModelCodeError",
    "NormalizationStats",
    "adapt_normalization",
    "build_checked",
    "build_mlp",
    "load_build_function",
    "user_objects",
]
