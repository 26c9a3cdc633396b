"""``model_input``: what the results' ``input`` says for files, normalize and modules."""

from __future__ import annotations

import numpy as np

from tunecluster.data import Splits
from tunecluster.render import input_text
from tunecluster.spec import parse_spec
from tunecluster.worker.trial import NO_PREPROCESSING, model_input


def _splits(names: list[str] | None) -> Splits:
    x = np.zeros((4, 3), dtype="float32")
    y = np.zeros(4, dtype="float32")
    return Splits(x, y, x, y, x, y, "regression", "regression", 0, [], names)


def test_a_csv_job_names_its_feature_columns_in_order() -> None:
    spec = parse_spec({"name": "j", "data": {"path": "d.csv", "target": "price"},
                       "model": {"builtin": "mlp", "task": "regression", "input": "normalize"}})
    got = model_input(spec, _splits(["rooms", "age", "area"]))
    assert got["shape"] == [3] and got["dtype"] == "float32"
    assert got["preprocessing"] == NO_PREPROCESSING
    assert got["in_model"].startswith("Normalization adapted on the training split")
    assert got["features"] == ["rooms", "age", "area"]
    line = input_text(got)
    assert "input: shape (3,) float32" in line and "features in order: rooms, age, area" in line
