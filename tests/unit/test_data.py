"""Data: embedded datasets, csv/npz files, and the train/valid/test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tunecluster.data import DATASETS, DataError, load_splits
from tunecluster.data.files import read_columns, read_file
from tunecluster.data.split import Splits, encode_labels, split_arrays
from tunecluster.spec.models import Data


def data(**raw: Any) -> Data:
    return Data.model_validate(raw)


def proportions(y: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y, minlength=k) / len(y)


def ids_of(x: np.ndarray) -> set[int]:
    """Row ids stored in column 0 by ``tagged``."""
    return {int(v) for v in x[:, 0]}


def tagged(n: int, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n rows whose first feature is a unique row id; k imbalanced classes."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.arange(n), rng.normal(size=(n, 2))]).astype("float32")
    y = np.repeat(np.arange(k), [n // 2] + [(n - n // 2) // (k - 1)] * (k - 2)
                  + [n - n // 2 - (n - n // 2) // (k - 1) * (k - 2)])
    return x, y


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    path.write_text("\n".join(",".join(str(v) for v in r) for r in [header, *rows]) + "\n")
    return path


# --- embedded datasets ---------------------------------------------------------------


def test_embedded_datasets_are_marked_and_typed() -> None:
    assert DATASETS["digits"].task == "classification" and DATASETS["digits"].embedded
    assert DATASETS["diabetes"].task == "regression" and DATASETS["diabetes"].embedded
    assert not DATASETS["mnist"].embedded


def test_digits_splits() -> None:
    s = load_splits(data(dataset="digits"))
    assert s.sizes() == {"train": 1079, "valid": 359, "test": 359}
    assert sum(s.sizes().values()) == 1797
    assert s.input_shape == (8, 8)
    assert s.x_train.dtype == np.float32 and 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0
    assert s.task == "classification" and s.label_kind == "sparse"
    assert s.num_classes == 10 and s.class_names == [str(i) for i in range(10)]


def test_diabetes_splits_are_regression() -> None:
    s = load_splits(data(dataset="diabetes"))
    assert s.task == "regression" and s.label_kind == "regression"
    assert s.y_train.dtype == np.float32
    assert s.input_shape == (10,)
    assert s.num_classes == 0


def test_split_sizes_follow_the_fractions() -> None:
    x, y = tagged(200)
    s = split_arrays(x, y, "classification", valid=0.15, test=0.25, seed=1)
    assert s.sizes() == {"train": 120, "valid": 30, "test": 50}


def test_split_is_stratified() -> None:
    s = load_splits(data(dataset="digits", split={"valid": 0.2, "test": 0.2, "seed": 3}))
    overall = proportions(np.concatenate([s.y_train, s.y_valid, s.y_test]), 10)
    for y in (s.y_train, s.y_valid, s.y_test):
        assert np.abs(proportions(y, 10) - overall).max() < 0.01


def test_split_is_stratified_for_imbalanced_classes() -> None:
    x, y = tagged(300)
    overall = proportions(y, 3)
    assert overall[0] == 0.5  # imbalanced on purpose
    s = split_arrays(x, y, "classification", valid=0.2, test=0.2, seed=5)
    for part in (s.y_train, s.y_valid, s.y_test):
        assert np.abs(proportions(part, 3) - overall).max() < 0.02


def test_same_seed_same_split() -> None:
    a = load_splits(data(dataset="wine", split={"seed": 11}))
    b = load_splits(data(dataset="wine", split={"seed": 11}))
    for name in ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_different_seed_different_split() -> None:
    x, y = tagged(120)
    a = split_arrays(x, y, "classification", 0.2, 0.2, seed=1)
    b = split_arrays(x, y, "classification", 0.2, 0.2, seed=2)
    assert ids_of(a.x_test) != ids_of(b.x_test)
    assert ids_of(a.x_valid) != ids_of(b.x_valid)


def test_splits_are_disjoint_and_cover_every_row() -> None:
    x, y = tagged(150)
    s = split_arrays(x, y, "classification", 0.2, 0.2, seed=7)
    train, valid, test = ids_of(s.x_train), ids_of(s.x_valid), ids_of(s.x_test)
    assert not (test & train) and not (test & valid) and not (train & valid)
    assert train | valid | test == set(range(150))


def test_no_test_row_of_an_embedded_set_reaches_training() -> None:
    s = load_splits(data(dataset="diabetes"))
    seen = {row.tobytes() for row in np.concatenate([s.x_train, s.x_valid])}
    assert not any(row.tobytes() in seen for row in s.x_test)


def test_labels_follow_their_rows_through_the_split() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([np.arange(100), rng.normal(size=100)]).astype("float32")
    y = (np.arange(100) % 4).astype("int64")  # label = id mod 4
    s = split_arrays(x, y, "classification", 0.2, 0.2, seed=0)
    for xs, ys in ((s.x_train, s.y_train), (s.x_valid, s.y_valid), (s.x_test, s.y_test)):
        np.testing.assert_array_equal(xs[:, 0].astype(int) % 4, ys)


def test_regression_split_is_not_stratified_but_works() -> None:
    x = np.arange(50, dtype="float32").reshape(-1, 1)
    y = np.linspace(0, 1, 50).astype("float32")
    s = split_arrays(x, y, "regression", 0.2, 0.2, seed=0)
    assert s.sizes() == {"train": 30, "valid": 10, "test": 10}
    np.testing.assert_allclose(s.y_train, s.x_train[:, 0] / 49, rtol=1e-6)


@pytest.mark.parametrize(("n", "valid", "test"), [(3, 0.2, 0.2), (8, 0.05, 0.2), (8, 0.2, 0.05)])
def test_too_few_rows(n: int, valid: float, test: float) -> None:
    x = np.zeros((n, 2), dtype="float32")
    y = np.linspace(0, 1, n).astype("float32")
    with pytest.raises(DataError, match=f"{n} rows are too few to split"):
        split_arrays(x, y, "regression", valid, test, seed=0)


def test_class_too_small_to_stratify() -> None:
    x = np.zeros((40, 2), dtype="float32")
    y = np.array(["a"] * 39 + ["rare"])
    with pytest.raises(DataError, match=r"^class 'rare' has 1 row\(s\); a split stratified") as e:
        split_arrays(x, y, "classification", 0.2, 0.2, seed=0)
    assert "\n" not in str(e.value)


def test_length_mismatch() -> None:
    with pytest.raises(DataError, match="features have 10 rows but labels have 9"):
        split_arrays(np.zeros((10, 2)), np.zeros(9), "classification", 0.2, 0.2, 0)


def test_single_class() -> None:
    with pytest.raises(DataError, match="at least 2 classes, found 1"):
        split_arrays(np.zeros((20, 2)), np.ones(20, dtype="int64"), "classification", 0.2, 0.2, 0)


def test_real_labels_for_classification() -> None:
    with pytest.raises(DataError, match="did you mean model.task: regression"):
        split_arrays(np.zeros((20, 2)), np.linspace(0, 1, 20), "classification", 0.2, 0.2, 0)


def test_string_target_for_regression() -> None:
    with pytest.raises(DataError, match="regression target must be numeric"):
        encode_labels([np.array(["a", "b"])], "regression")


def test_onehot_labels_keep_their_kind() -> None:
    x, y = tagged(90)
    onehot = np.eye(3, dtype="float32")[y]
    s = split_arrays(x, onehot, "classification", 0.2, 0.2, seed=0)
    assert s.label_kind == "onehot" and s.num_classes == 3
    assert s.y_train.shape == (len(s.x_train), 3)
    overall = proportions(y, 3)
    assert np.abs(proportions(s.y_test.argmax(1), 3) - overall).max() < 0.05


# --- csv --------------------------------------------------------------------------------


def test_csv_with_numeric_target(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "label", "b"],
                     [[i, i % 2, i * 2] for i in range(40)])
    x, y = read_file(path, "label")
    assert x.shape == (40, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 1], np.arange(40) * 2)  # the target column is removed
    assert y.dtype == np.int64 and set(y.tolist()) == {0, 1}


def test_csv_with_string_labels(tmp_path: Path) -> None:
    names = ["setosa", "versicolor", "virginica"]
    rows = [[i, i * 0.5, names[i % 3]] for i in range(60)]
    path = write_csv(tmp_path / "flowers.csv", ["f1", "f2", " species "], rows)
    s = load_splits(data(path=str(path), target="species"))
    assert s.task == "classification" and s.label_kind == "sparse"
    assert s.class_names == names and s.num_classes == 3
    # encoded labels match the rows they came with
    for xs, ys in ((s.x_train, s.y_train), (s.x_test, s.y_test)):
        np.testing.assert_array_equal(xs[:, 0].astype(int) % 3, ys)


def test_csv_with_real_target_is_regression(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", ["x", "price"], [[i, i * 1.5 + 0.25] for i in range(30)])
    s = load_splits(data(path=str(path), target="price"))
    assert s.task == "regression" and s.y_train.dtype == np.float32


def test_csv_non_numeric_feature(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "color", "y"], [[1, 0.5, 0], [2, "red", 1]])
    with pytest.raises(DataError) as info:
        read_file(path, "y")
    text = str(info.value)
    assert "d.csv:3" in text and "'color' is not numeric" in text and "\n" not in text


def test_csv_missing_target_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "b"], [[1, 2]])
    with pytest.raises(DataError, match="no target column 'price'; columns: a, b"):
        read_file(path, "price")


def test_csv_needs_a_target(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "b"], [[1, 2]])
    with pytest.raises(DataError, match="data.target must name the label column"):
        read_file(path, None)


def test_csv_ragged_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,y\n1,2,0\n1,2\n")
    with pytest.raises(DataError, match=r"d.csv:3: 2 fields, header has 3"):
        read_file(path, "y")


def test_csv_empty_and_header_only(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        read_file(tmp_path / "e.csv", "y")
    (tmp_path / "h.csv").write_text("a,y\n")
    with pytest.raises(DataError, match="no data rows"):
        read_file(tmp_path / "h.csv", "y")


def test_missing_file_and_bad_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_file(tmp_path / "nope.csv", "y")
    (tmp_path / "d.txt").write_text("a")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'; use \.csv, \.npz"):
        read_file(tmp_path / "d.txt", "y")


# --- npz --------------------------------------------------------------------------------


def test_npz_x_y(tmp_path: Path) -> None:
    x, y = tagged(100)
    np.savez(tmp_path / "d.npz", x=x.astype("float64"), y=y)
    s = load_splits(data(path=str(tmp_path / "d.npz")))
    assert s.x_train.dtype == np.float32
    assert s.task == "classification" and s.num_classes == 3
    assert ids_of(s.x_train) | ids_of(s.x_valid) | ids_of(s.x_test) == set(range(100))


def test_npz_without_y(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(DataError, match=r"needs arrays 'x' and 'y', has \['labels', 'x'\]"):
        read_file(tmp_path / "d.npz", None)


def test_npz_length_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match="x has 3 rows but y has 4"):
        read_file(tmp_path / "d.npz", None)


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="cannot read npz"):
        read_file(tmp_path / "d.npz", None)


def test_corrupt_npz(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="d.npz: cannot read npz"):
        read_file(tmp_path / "d.npz", None)


# --- explicit split files and resolve ------------------------------------------------------


def test_explicit_split_files_share_one_vocabulary(tmp_path: Path) -> None:
    header = ["a", "b", "kind"]
    write_csv(tmp_path / "train.csv", header, [[i, 1, ["cat", "dog"][i % 2]] for i in range(10)])
    write_csv(tmp_path / "valid.csv", header, [[i, 2, "dog"] for i in range(4)])
    write_csv(tmp_path / "test.csv", header, [[i, 3, ["cat", "dog", "eel"][i % 3]]
                                              for i in range(6)])
    s = load_splits(data(files={"train": "train.csv", "valid": "valid.csv", "test": "test.csv"},
                         target="kind"),
                    resolve=lambda p: str(tmp_path / p))
    assert isinstance(s, Splits)
    assert s.sizes() == {"train": 10, "valid": 4, "test": 6}
    assert s.class_names == ["cat", "dog", "eel"]
    assert s.y_valid.tolist() == [1, 1, 1, 1]
    assert s.y_test.tolist() == [0, 1, 2, 0, 1, 2]
    # the files are used as given: no reshuffling across them
    assert set(s.x_valid[:, 1].tolist()) == {2.0} and set(s.x_test[:, 1].tolist()) == {3.0}


def test_resolve_maps_job_paths(tmp_path: Path) -> None:
    x, y = tagged(60)
    np.savez(tmp_path / "stored.npz", x=x, y=y)
    seen: list[str] = []

    def resolve(name: str) -> str:
        seen.append(name)
        return str(tmp_path / "stored.npz")

    s = load_splits(data(path="uploaded/d.npz"), "classification", resolve)
    assert seen == ["uploaded/d.npz"]
    assert sum(s.sizes().values()) == 60


def test_missing_split_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_splits(data(files={"train": str(tmp_path / "a.csv"), "valid": "b.csv",
                                "test": "c.csv"}, target="y"))


def test_task_given_overrides_inference(tmp_path: Path) -> None:
    x = np.arange(40, dtype="float32").reshape(-1, 1)
    y = (np.arange(40) % 5).astype("int64")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert load_splits(data(path=str(tmp_path / "d.npz"))).task == "classification"
    s = load_splits(data(path=str(tmp_path / "d.npz")), task="regression")
    assert s.task == "regression" and s.label_kind == "regression"


def test_whole_number_targets_that_are_no_class_indices_reach_the_model_unchanged(
        tmp_path: Path) -> None:
    """A custom model that did not say its task: prices in whole numbers (or labels 1..k)
    are not taken for classes and re-encoded; only text labels and indices 0..k-1 are
    classes (for which the encoding changes nothing)."""
    x = np.arange(48, dtype="float32").reshape(-1, 1)
    prices = (np.arange(48) % 12 * 10_000).astype("int64")
    np.savez(tmp_path / "prices.npz", x=x, y=prices)
    s = load_splits(data(path=str(tmp_path / "prices.npz")))
    assert s.task == "regression" and s.label_kind == "regression"
    assert set(np.concatenate([s.y_train, s.y_valid, s.y_test]).tolist()) == set(
        prices.astype("float32").tolist())
    write_csv(tmp_path / "p.csv", ["x", "price"], [[i, 1000 + i % 7 * 500] for i in range(40)])
    assert load_splits(data(path=str(tmp_path / "p.csv"), target="price")).task == "regression"
    # labels 1..3 are numbers as given, unless the job says classification
    np.savez(tmp_path / "one_based.npz", x=x, y=(np.arange(48) % 3 + 1))
    assert load_splits(data(path=str(tmp_path / "one_based.npz"))).task == "regression"
    s = load_splits(data(path=str(tmp_path / "one_based.npz")), task="classification")
    assert s.class_names == ["1", "2", "3"] and set(s.y_train.tolist()) == {0, 1, 2}



def _iris_like(path: Path, header: list[str], n: int = 12) -> Path:
    """Rows whose feature values tell their column: a=i, b=100+i, c=200+i, d=300+i."""
    rows = [{"a": i, "b": 100 + i, "c": 200 + i, "d": 300 + i, "kind": ["x", "y"][i % 2]}
            for i in range(n)]
    return write_csv(path, header, [[r[h] for h in header] for r in rows])


def test_explicit_split_files_are_matched_by_column_name(tmp_path: Path) -> None:
    _iris_like(tmp_path / "train.csv", ["a", "b", "c", "kind"])
    _iris_like(tmp_path / "valid.csv", ["c", "kind", "a", "b"])  # same columns, reordered
    _iris_like(tmp_path / "test.csv", ["a", "b", "c", "kind"])
    files = {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}
    s = load_splits(data(files=files, target="kind"), resolve=lambda p: str(tmp_path / p))
    np.testing.assert_array_equal(s.x_valid, s.x_train)  # reordered to train's a, b, c
    _iris_like(tmp_path / "test.csv", ["a", "c", "kind", "d"])
    with pytest.raises(DataError) as e:
        load_splits(data(files=files, target="kind"), resolve=lambda p: str(tmp_path / p))
    assert str(e.value) == ("data.files: test.csv has other columns than train: missing 'b';"
                            " not in train 'd'")


@pytest.mark.parametrize("cell, error", [
    ("", r"d\.csv:3: column 'b' has a missing value"),
    ("nan", r"d\.csv:3: column 'b' is not a finite number"),
    ("-inf", r"d\.csv:3: column 'b' is not a finite number"),
    ("red", r"d\.csv:3: column 'b' is not numeric \('red'"),
])
def test_a_missing_or_non_finite_feature_is_named(tmp_path: Path, cell: str,
                                                  error: str) -> None:
    write_csv(tmp_path / "d.csv", ["a", "b", "y"], [[1, 2, 0], [3, cell, 1]] + [[i, i, i % 2]
                                                                            for i in range(20)])
    with pytest.raises(DataError, match=f"^{error}"):
        load_splits(data(path=str(tmp_path / "d.csv"), target="y"))


def test_a_missing_label_and_a_bom_header(tmp_path: Path) -> None:
    write_csv(tmp_path / "d.csv", ["a", "y"], [[1, "cat"], [2, ""], [3, "dog"]])
    with pytest.raises(DataError, match=r"^d\.csv:3: the target 'y' is missing$"):
        load_splits(data(path=str(tmp_path / "d.csv"), target="y"))
    rows = "\n".join(f"{i % 2},{i}" for i in range(30))
    (tmp_path / "bom.csv").write_text("\ufeffy,a\n" + rows + "\n", encoding="utf-8")
    assert load_splits(data(path=str(tmp_path / "bom.csv"), target="y")).num_classes == 2


def test_a_valid_parquet_file_loads(tmp_path: Path, require) -> None:
    """A Parquet file (as data.path) loads like the same CSV: features in column order,
    the target column removed, string labels encoded, split as any file."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        require("pyarrow (with ray[tune], the test extra)", str(exc))
    names = ["setosa", "versicolor", "virginica"]
    path = tmp_path / "flowers.parquet"
    pq.write_table(pa.table({"f1": list(range(60)), "species": [names[i % 3] for i in range(60)],
                             "f2": [i * 0.5 for i in range(60)]}), path)
    x, y, columns = read_columns(path, "species")
    assert columns == ["f1", "f2"] and x.shape == (60, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 1], np.arange(60) * 0.5)
    assert list(y[:3]) == names
    s = load_splits(data(path=str(path), target="species"))
    assert s.task == "classification" and s.class_names == names and s.num_classes == 3
    assert sum(s.sizes().values()) == 60
    for xs, ys in ((s.x_train, s.y_train), (s.x_test, s.y_test)):
        np.testing.assert_array_equal(xs[:, 0].astype(int) % 3, ys)


def test_parquet_nulls_and_text_features_are_named(tmp_path: Path, require) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        require("pyarrow (with ray[tune], the test extra)", str(exc))

    def write(name: str, **columns: list) -> str:
        pq.write_table(pa.table(columns), tmp_path / name)
        return str(tmp_path / name)

    n = list(range(20))
    cases = {
        write("null.parquet", a=[None if i == 6 else float(i) for i in n], y=[i % 2 for i in n]):
            r"^null\.parquet: row 7: column 'a' has a missing value$",
        write("text.parquet", a=[str(i) + "x" for i in n], y=[i % 2 for i in n]):
            r"^text\.parquet: column 'a' is not numeric",
        write("label.parquet", a=[float(i) for i in n], y=[None] + [i % 2 for i in n[1:]]):
            r"^label\.parquet: row 1: the target 'y' is missing$",
        write("alone.parquet", y=[i % 2 for i in n]):
            r"^alone\.parquet: no feature column besides the target 'y'$",
    }
    for path, error in cases.items():
        with pytest.raises(DataError, match=error):
            load_splits(data(path=path, target="y"))


def test_splits_of_a_csv_name_its_feature_columns(tmp_path: Path) -> None:
    """What ``build_model(hp, data)`` gets as ``data.feature_names``: train's columns
    (a path or explicit files), None for a named dataset."""
    from tunecluster.data import load_splits
    from tunecluster.spec.models import Data

    rows = "\n".join(f"{i},{i % 7},{i * 0.5}" for i in range(40))
    (tmp_path / "d.csv").write_text("rooms,age,price\n" + rows + "\n")
    splits = load_splits(Data(path=str(tmp_path / "d.csv"), target="price"), "regression")
    assert splits.feature_names == ["rooms", "age"]
    assert load_splits(Data(dataset="iris")).feature_names is None
