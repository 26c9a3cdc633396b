"""Reading user data files: CSV with a target column, NPZ with ``x``/``y``, Parquet."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from tunecluster.data.registry import DataError

SUFFIXES = (".csv", ".npz", ".parquet")


def read_file(path: str | Path, target: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from one file; string labels stay strings (encoded later)."""
    x, y, _ = read_columns(path, target)
    return x, y


def read_columns(path: str | Path,
                 target: str | None) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """``(x, y, feature column names)`` from one file (names None for npz, which has
    none). Every feature value is a finite number and every label is present: a missing
    or non-finite value is an error naming the file, the row and the column."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path.name}: unsupported file type {suffix!r}; use {', '.join(SUFFIXES)}")
    if path.is_dir():
        raise DataError(f"data file {str(path)!r} is a directory; name a file in it")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    if suffix == ".npz":
        return (*_read_npz(path), None)
    if target is None:
        raise DataError(f"{path.name}: data.target must name the label column")
    if suffix == ".csv":
        return _read_csv(path, target)
    return _read_parquet(path, target)


def read_weights(path: str | Path, rows: int) -> np.ndarray | None:
    """An npz file's optional ``sample_weight`` array (Keras's ``fit(sample_weight=)``),
    one finite weight of 0 or more per row; None when it has none (and for the other
    formats, which name no weights)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "sample_weight" not in archive:
                return None
            weights = np.asarray(archive["sample_weight"])
    except (OSError, ValueError) as exc:
        raise DataError(f"{path.name}: cannot read npz ({exc})") from None
    problem = weights_problem(weights, rows)
    if problem:
        raise DataError(f"{path.name}: sample_weight: {problem}")
    return weights.reshape(-1).astype("float32")


def weights_problem(weights: np.ndarray, rows: int) -> str | None:
    """What is wrong with ``weights`` as Keras's ``sample_weight`` for ``rows`` rows (one
    finite number of 0 or more per row), or None."""
    if weights.dtype.kind not in "iuf" or weights.ndim == 0 or \
            weights.reshape(len(weights), -1).shape != (rows, 1):
        return f"one number per row ({rows}), got shape {weights.shape} of {weights.dtype}"
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        return "weights must be finite and 0 or more"
    return None


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        # allow_pickle=False: a data file must never run code.
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise DataError(f"{path.name}: an npz file needs arrays 'x' and 'y',"
                                f" has {sorted(archive.files)}")
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path.name}: cannot read npz ({exc})") from None
    if len(x) != len(y):
        raise DataError(f"{path.name}: x has {len(x)} rows but y has {len(y)}")
    return x.astype("float32"), y


def _read_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first name
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path.name}: the file is empty") from None
        header = [h.strip() for h in header]
        if target not in header:
            raise DataError(f"{path.name}: no target column {target!r};"
                            f" columns: {', '.join(header)}")
        t = header.index(target)
        names = [h for i, h in enumerate(header) if i != t]
        if not names:
            raise DataError(f"{path.name}: no feature column besides the target {target!r}")
        features, labels = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path.name}:{line_no}: {len(row)} fields,"
                                f" header has {len(header)}")
            label = row[t].strip()
            if not label:
                raise DataError(f"{path.name}:{line_no}: the target {target!r} is missing")
            if _is_float(label) and not math.isfinite(float(label)):
                raise DataError(f"{path.name}:{line_no}: the target {target!r} is not a finite"
                                f" number ({label!r})")
            labels.append(label)
            cells = [v.strip() for i, v in enumerate(row) if i != t]
            try:
                values = [float(v) for v in cells]
            except ValueError:
                column, cell = next((names[i], v) for i, v in enumerate(cells)
                                    if not _is_float(v))
                raise DataError(
                    f"{path.name}:{line_no}: column {column!r} "
                    + ("has a missing value" if not cell else
                       f"is not numeric ({cell[:20]!r}; encode categorical features"
                       " before tuning)")) from None
            if not all(math.isfinite(v) for v in values):
                column = names[next(i for i, v in enumerate(values) if not math.isfinite(v))]
                raise DataError(f"{path.name}:{line_no}: column {column!r} is not a finite"
                                " number (a missing value?)")
            features.append(values)
    if not labels:
        raise DataError(f"{path.name}: no data rows")
    return np.asarray(features, dtype="float32"), _labels(labels), names


def _read_parquet(path: Path, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path.name}: reading parquet needs pyarrow"
                        " (pip install pyarrow)") from None
    table = pq.read_table(path)
    if target not in table.column_names:
        raise DataError(f"{path.name}: no target column {target!r};"
                        f" columns: {', '.join(table.column_names)}")
    names = [c for c in table.column_names if c != target]
    if not names:
        raise DataError(f"{path.name}: no feature column besides the target {target!r}")
    if table.num_rows == 0:
        raise DataError(f"{path.name}: no data rows")
    labels = table.column(target).to_pylist()
    if None in labels:
        raise DataError(f"{path.name}: row {labels.index(None) + 1}: the target {target!r}"
                        " is missing")
    cols = []
    for name in names:
        values = table.column(name).to_pylist()
        if None in values:
            raise DataError(f"{path.name}: row {values.index(None) + 1}: column {name!r}"
                            " has a missing value")
        try:
            col = np.asarray(values, dtype="float32")
        except (TypeError, ValueError):
            raise DataError(f"{path.name}: column {name!r} is not numeric"
                            " (encode categorical features before tuning)") from None
        if not np.all(np.isfinite(col)):
            row = int(np.argmax(~np.isfinite(col))) + 1
            raise DataError(f"{path.name}: row {row}: column {name!r} is not a finite number")
        cols.append(col)
    return np.stack(cols, axis=1), np.asarray(labels), names


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _labels(values: list[str]) -> np.ndarray:
    """Numeric labels become numbers; anything else stays strings."""
    if all(_is_float(v) for v in values):
        numbers = np.asarray([float(v) for v in values])
        if np.all(numbers == np.round(numbers)):
            return numbers.astype("int64")
        return numbers.astype("float32")
    return np.asarray(values)
