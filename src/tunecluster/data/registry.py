"""Named datasets: embedded ones (shipped inside scikit-learn, no network) and Keras' own.

Each loader returns ``(x, y)`` as numpy arrays, features float32. Keras' sets are
downloaded by Keras on first use; where there is no network and no warm
``~/.keras/datasets`` cache, they fail with a ``DataError`` that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tunecluster.errors import TuneclusterError


class DataError(TuneclusterError, ValueError):
    """Data cannot be loaded or split as the job asks."""


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str  # classification | regression
    description: str
    embedded: bool
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


def _sklearn(name: str, images: bool = False) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")()
        if images:
            # digits: 8x8 images with values 0..16, scaled to [0, 1] like the course's /255.
            return bunch.images.astype("float32") / 16.0, bunch.target.astype("int64")
        y = bunch.target
        y = y.astype("float32") if y.dtype.kind == "f" else y.astype("int64")
        return bunch.data.astype("float32"), y

    return load


def _keras(name: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        import keras

        module = getattr(keras.datasets, name)
        try:
            (x_a, y_a), (x_b, y_b) = module.load_data()
        except Exception as exc:  # network, cache or checksum: all mean "not available here"
            raise DataError(
                f"dataset {name!r} could not be loaded: Keras downloads it on first use and"
                f" that failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]});"
                " use an embedded dataset or a file, or warm ~/.keras/datasets"
            ) from None
        x = np.concatenate([x_a, x_b]).astype("float32")
        y = np.concatenate([y_a, y_b])
        if name in ("mnist", "fashion_mnist"):
            x /= 255.0
            y = y.astype("int64")
        else:
            y = y.astype("float32")
        return x, y

    return load


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("digits", "classification", "8x8 handwritten digits, 1797 images, 10 classes",
                True, _sklearn("digits", images=True)),
        Dataset("iris", "classification", "iris flowers, 150 rows x 4 features, 3 classes",
                True, _sklearn("iris")),
        Dataset("wine", "classification", "wine cultivars, 178 rows x 13 features, 3 classes",
                True, _sklearn("wine")),
        Dataset("breast_cancer", "classification",
                "breast cancer diagnosis, 569 rows x 30 features, 2 classes",
                True, _sklearn("breast_cancer")),
        Dataset("diabetes", "regression", "diabetes progression, 442 rows x 10 features",
                True, _sklearn("diabetes")),
        Dataset("mnist", "classification", "28x28 handwritten digits, 70000 images (download)",
                False, _keras("mnist")),
        Dataset("fashion_mnist", "classification",
                "28x28 clothing images, 70000 images, 10 classes (download)",
                False, _keras("fashion_mnist")),
        Dataset("california_housing", "regression",
                "California house prices, 20640 rows x 8 features (download)",
                False, _keras("california_housing")),
    )
}
