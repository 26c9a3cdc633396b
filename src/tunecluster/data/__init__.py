"""Job data: named datasets and files, split into train / validation / test.

``load_splits(data_spec, task, resolve)`` is the one entry point; ``resolve`` maps a
path named in the job to a readable local file (workers map uploaded files here).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tunecluster.data.files import read_file
from tunecluster.data.registry import DATASETS, DataError, Dataset
from tunecluster.data.split import Splits, from_parts, split_arrays
from tunecluster.spec.models import Data

__all__ = ["DATASETS", "DataError", "Dataset", "Splits", "load_splits"]


def load_splits(
    data: Data, task: str | None = None, resolve: Callable[[str], str] = str
) -> Splits:
    """Load the job's data and split it; deterministic for a given ``data.split.seed``.

    ``task`` None (a custom model that did not say) means: the named dataset's task,
    else regression for real-valued labels and classification for the rest.
    """
    if data.files is not None:
        parts = [read_file(resolve(p), data.target)
                 for p in (data.files.train, data.files.valid, data.files.test)]
        return from_parts(parts, task or _infer_task(parts[0][1]))
    if data.dataset is not None:
        x, y = DATASETS[data.dataset].load()
        task = task or DATASETS[data.dataset].task
    else:
        assert data.path is not None
        x, y = read_file(resolve(data.path), data.target)
    s = data.split
    return split_arrays(x, y, task or _infer_task(y), s.valid, s.test, s.seed)


def _infer_task(y: np.ndarray) -> str:
    if y.dtype.kind == "f" and y.ndim == 1 and not np.all(y == np.round(y)):
        return "regression"
    return "classification"
