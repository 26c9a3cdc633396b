"""What a custom ``build_model(hp, data)`` sees of the job's data.

The course's regression model adapts a ``Normalization`` layer on the training set
only. A module model that takes a second parameter gets this object: the very arrays
the trial fits on (train and validation, labels as encoded for the model), read-only,
with the feature names and the task; never the test split, which is used once, at the
end. ``build_model(hp)`` (one parameter) is called as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TrainingData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    feature_names: tuple[str, ...] | None  # a CSV's or Parquet file's columns, else None
    task: str  # classification | regression
    num_classes: int  # 0 for regression

    @classmethod
    def from_splits(cls, splits: Any) -> TrainingData:
        names = getattr(splits, "feature_names", None)
        return cls(_read_only(splits.x_train), _read_only(splits.y_train),
                   _read_only(splits.x_valid), _read_only(splits.y_valid),
                   tuple(names) if names is not None else None, splits.task,
                   splits.num_classes)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False  # adapt() reads; nothing the user does changes the trial's
    return view


def takes_data(build: Callable[..., Any]) -> bool:
    """Whether ``build`` is ``build_model(hp, data)``: two positional parameters or more."""
    try:
        params = inspect.signature(build).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: called as build(hp)
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2
