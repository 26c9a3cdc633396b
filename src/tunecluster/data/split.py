"""Train / validation / test splits. The test split is for the final evaluation only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunecluster.data.registry import DataError


@dataclass
class Splits:
    """The three splits of a job's data, plus what the model needs to know about them.

    ``label_kind`` is ``sparse`` (integer classes), ``onehot`` (one column per class) or
    ``regression`` (real targets); it decides the loss of the builtin models.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    label_kind: str
    num_classes: int
    class_names: list[str]
    feature_names: list[str] | None = None  # a CSV's or Parquet file's feature columns
    # Keras's sample_weight of each split (npz files' "sample_weight"), or None
    w_train: np.ndarray | None = None
    w_valid: np.ndarray | None = None
    w_test: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.x_train), "valid": len(self.x_valid), "test": len(self.x_test)}


def split_arrays(
    x: np.ndarray, y: np.ndarray, task: str, valid: float, test: float, seed: int,
    weights: np.ndarray | None = None,
) -> Splits:
    """Shuffle and cut one dataset into three, stratified by class for classification;
    ``weights`` (a sample weight per row) cut the same way."""
    from sklearn.model_selection import train_test_split

    if len(x) != len(y):
        raise DataError(f"features have {len(x)} rows but labels have {len(y)}")
    y, label_kind, names = encode_labels([y], task)
    y = y[0]
    stratify = _strata(y, label_kind)
    n = len(x)
    n_test, n_valid = round(n * test), round(n * valid)
    if n - n_test - n_valid < 2 or n_test < 1 or n_valid < 1:
        raise DataError(f"{n} rows are too few to split into train/valid/test ({valid=}, {test=})")
    if stratify is not None:
        classes, counts = np.unique(stratify, return_counts=True)
        if counts.min() < 2:  # scikit-learn's own minimum for the first cut
            rare = names[int(classes[counts.argmin()])] if names else str(classes[0])
            raise DataError(
                f"class {rare!r} has {counts.min()} row(s); a split stratified by class needs"
                " 2 or more of each (more data; or, for numbers that are not classes,"
                " model.task: regression)")
    try:
        # the row numbers go along (the same permutation: x and y split as without them)
        x_rest, x_test, y_rest, y_test, r_rest, r_test = train_test_split(
            x, y, np.arange(n), test_size=n_test, random_state=seed, stratify=stratify
        )
        x_train, x_valid, y_train, y_valid, r_train, r_valid = train_test_split(
            x_rest, y_rest, r_rest, test_size=n_valid, random_state=seed + 1,
            stratify=_strata(y_rest, label_kind),
        )
    except ValueError as exc:  # a class too small to stratify
        raise DataError(f"cannot split the data stratified by class: {exc}") from None
    cut = (None, None, None) if weights is None else (
        weights[r_train], weights[r_valid], weights[r_test])
    return Splits(x_train, y_train, x_valid, y_valid, x_test, y_test, task, label_kind,
                  len(names), names, None, *cut)


def from_parts(
    parts: list[tuple[np.ndarray, np.ndarray]], task: str
) -> Splits:
    """Splits given as explicit (train, valid, test) arrays."""
    ys, label_kind, names = encode_labels([y for _, y in parts], task)
    (x_tr, _), (x_va, _), (x_te, _) = parts
    return Splits(x_tr, ys[0], x_va, ys[1], x_te, ys[2], task, label_kind, len(names), names)


def encode_labels(ys: list[np.ndarray], task: str) -> tuple[list[np.ndarray], str, list[str]]:
    """Map class labels of every part onto 0..k-1 with one shared vocabulary."""
    if task == "regression":
        for y in ys:
            if y.dtype.kind not in "iuf":
                raise DataError("a regression target must be numeric")
        return [y.astype("float32") for y in ys], "regression", []
    if ys[0].ndim == 2 and ys[0].shape[1] > 1:
        k = ys[0].shape[1]
        return [y.astype("float32") for y in ys], "onehot", [str(i) for i in range(k)]
    flat = [np.asarray(y).reshape(-1) for y in ys]
    if flat[0].dtype.kind == "f" and not all(np.all(f == np.round(f)) for f in flat):
        raise DataError("classification labels are real numbers;"
                        " did you mean model.task: regression?")
    classes = np.unique(np.concatenate(flat))
    if len(classes) < 2:
        raise DataError(f"classification needs at least 2 classes, found {len(classes)}")
    index = {c: i for i, c in enumerate(classes.tolist())}
    # each in the shape it was given: labels of shape (n, 1) reach the model as (n, 1),
    # as Keras would give them (a loss that broadcasts them depends on it)
    encoded = [np.asarray([index[v] for v in f.tolist()], dtype="int64").reshape(
        np.shape(y)) for f, y in zip(flat, ys, strict=True)]
    return encoded, "sparse", [str(c) for c in classes.tolist()]


def _strata(y: np.ndarray, label_kind: str) -> np.ndarray | None:
    if label_kind == "regression":
        return None
    return y.argmax(axis=1) if label_kind == "onehot" else y.reshape(-1)
