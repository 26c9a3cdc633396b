"""Reading user data files: CSV with a target column, NPZ with ``x``/``y``, Parquet."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tunecluster.data.registry import DataError

SUFFIXES = (".csv", ".npz", ".parquet")


def read_file(path: str | Path, target: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from one file; string labels stay strings (encoded later)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path.name}: unsupported file type {suffix!r}; use {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    if suffix == ".npz":
        return _read_npz(path)
    if target is None:
        raise DataError(f"{path.name}: data.target must name the label column")
    if suffix == ".csv":
        return _read_csv(path, target)
    return _read_parquet(path, target)


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


def _read_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as handle:
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
        features, labels = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path.name}:{line_no}: {len(row)} fields,"
                                f" header has {len(header)}")
            labels.append(row[t].strip())
            try:
                features.append([float(v) for i, v in enumerate(row) if i != t])
            except ValueError:
                bad = next(header[i] for i, v in enumerate(row) if i != t and not _is_float(v))
                raise DataError(
                    f"{path.name}:{line_no}: column {bad!r} is not numeric"
                    " (encode categorical features before tuning)"
                ) from None
    if not labels:
        raise DataError(f"{path.name}: no data rows")
    return np.asarray(features, dtype="float32"), _labels(labels)


def _read_parquet(path: Path, target: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path.name}: reading parquet needs pyarrow"
                        " (pip install pyarrow)") from None
    table = pq.read_table(path)
    if target not in table.column_names:
        raise DataError(f"{path.name}: no target column {target!r};"
                        f" columns: {', '.join(table.column_names)}")
    y = np.asarray(table.column(target).to_pylist())
    cols = [np.asarray(table.column(c).to_pylist(), dtype="float32")
            for c in table.column_names if c != target]
    return np.stack(cols, axis=1), y


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
