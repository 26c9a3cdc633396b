"""What the exported model expects is said, not guessed: ``results`` (JSON and text) and
``best --export`` state the model's input shape and the preprocessing to apply, and the
README's snippet predicts with the exported model of a real job. Real Redis, chief and
workers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from .conftest import ROOT, cli, run_job

JOB = """
name: model-input
data: {dataset: digits}
model:
  builtin: mlp
  task: classification
  input: flatten
  hyperparameters: {n_hidden: {fixed: 1}, n_neurons: {fixed: 32},
                    learning_rate: {fixed: 0.01}, optimizer: {fixed: adam}}
search: {algorithm: random, objective: val_accuracy, max_trials: 1, seed: 1}
train: {epochs: 3, batch_size: 32}
"""


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- predict-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert found, "README.md lost its prediction snippet"
    return found.group(1)


def test_results_and_export_state_the_input_and_the_readme_snippet_predicts(
        cluster, store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB)
    doc = run_job(store, spec)
    assert doc["state"] == "completed", doc
    shown = doc["input"]
    assert shown["shape"] == [8, 8] and shown["dtype"] == "float32", shown
    assert "divided by 16" in shown["preprocessing"], shown  # what the loader did
    assert "Flatten" in shown["in_model"], shown  # what the model does itself
    assert shown["features"] is None, shown

    text = cli("results", doc["job"], "--redis", cluster.url)
    assert "input: shape (8, 8) float32" in text.stdout, text.stdout
    assert "divided by 16" in text.stdout, text.stdout

    monkeypatch.chdir(tmp_path)
    exported = cli("best", doc["job"], "--redis", cluster.url, "--export", "model.keras")
    assert exported.returncode == 0, exported.stderr
    assert "input: shape (8, 8) float32" in exported.stdout, exported.stdout
    (tmp_path / "results.json").write_text(
        cli("results", doc["job"], "--redis", cluster.url, "--json").stdout)

    scope: dict = {}
    exec(readme_snippet(), scope)  # noqa: S102 - the README's own snippet, as a user runs it
    digits = load_digits()
    assert scope["proba"].shape == (len(digits.data), 10)
    accuracy = float(np.mean(np.asarray(scope["labels"]).astype(int) == digits.target))
    assert accuracy > 0.8, accuracy  # the right preprocessing: raw 0..16 pixels score worse
