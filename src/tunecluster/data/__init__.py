"""Job data: named datasets and files, split into train / validation / test.

``load_splits(data_spec, task, resolve)`` is the one entry point; ``resolve`` maps a
path named in the job to a readable local file (workers map uploaded files here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from tunecluster.data.files import read_columns, read_weights
from tunecluster.data.registry import DATASETS, DataError, Dataset
from tunecluster.data.split import Splits, from_parts, split_arrays

if TYPE_CHECKING:  # the spec's data section: the spec imports the dataset registry
    from tunecluster.spec.models import Data

__all__ = ["DATASETS", "DataError", "Dataset", "Splits", "infer_task", "load_splits"]


def load_splits(
    data: Data, task: str | None = None, resolve: Callable[[str], str] = str
) -> Splits:
    """Load the job's data and split it; deterministic for a given ``data.split.seed``.

    ``task`` None (a custom model that did not say) means: the named dataset's task,
    else what the labels are (``infer_task``: class indices or text, or numbers).
    """
    names: list[str] | None = None
    if data.files is not None:
        paths = (data.files.train, data.files.valid, data.files.test)
        local = {p: resolve(p) for p in paths}
        read = [(p, *read_columns(local[p], data.target)) for p in paths]
        parts = _same_columns(read)
        splits = from_parts(parts, task or infer_task(parts[0][1]))
        w_train, w_valid, w_test = (read_weights(local[p], len(x)) for p, (x, _) in
                                    zip(paths, parts, strict=True))
        return replace(splits, feature_names=read[0][3], w_train=w_train, w_valid=w_valid,
                       w_test=w_test)
    weights = None
    if data.dataset is not None:
        x, y = DATASETS[data.dataset].load()
        task = task or DATASETS[data.dataset].task
    else:
        assert data.path is not None
        local = resolve(data.path)
        x, y, names = read_columns(local, data.target)
        weights = read_weights(local, len(x))
    s = data.split
    splits = split_arrays(x, y, task or infer_task(y), s.valid, s.test, s.seed, weights)
    return replace(splits, feature_names=names)


def _same_columns(
    parts: list[tuple[str, np.ndarray, np.ndarray, list[str] | None]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The explicit splits' ``(x, y)``, each with train's feature columns in train's
    order: columns are matched by name (a split whose columns come in another order is
    reordered), and a split that lacks one of train's columns or has another is an
    error naming both. Files without names (npz) must have train's width."""
    (_, x_train, y_train, names), rest = parts[0], parts[1:]
    out = [(x_train, y_train)]
    for path, x, y, theirs in rest:
        if names is not None and theirs is not None and theirs != names:
            missing = [c for c in names if c not in theirs]
            extra = [c for c in theirs if c not in names]
            if missing or extra:
                raise DataError(
                    f"data.files: {path} has other columns than train:"
                    + (f" missing {', '.join(map(repr, missing))}" if missing else "")
                    + (";" if missing and extra else "")
                    + (f" not in train {', '.join(map(repr, extra))}" if extra else ""))
            x = x[:, [theirs.index(c) for c in names]]
        if x.shape[1:] != x_train.shape[1:]:
            raise DataError(f"data.files: {path} has features of shape {x.shape[1:]},"
                            f" train {x_train.shape[1:]}")
        out.append((x, y))
    return out


def infer_task(y: np.ndarray) -> str:
    """The task of a custom model that did not say: classes where encoding them leaves
    the model's labels as they are (one-hot rows, indices 0..k-1) or where they cannot
    reach a model unencoded (text); regression, labels as given, for other numbers
    (real values, and whole numbers such as prices, years or labels 1..k: a model
    that classifies those says ``model.task: classification``)."""
    if y.ndim == 2 and y.shape[1] > 1:
        return "classification"
    if y.dtype.kind not in "iufb":
        return "classification"
    flat = y.reshape(-1)
    if not np.all(np.isfinite(flat)) or not np.all(flat == np.round(flat)):
        return "regression"
    classes = np.unique(flat)
    indices = len(classes) > 1 and np.array_equal(classes, np.arange(len(classes)))
    return "classification" if indices else "regression"
