"""``train.deterministic: true``: two runs of the same job give the same score per trial.
Real Redis, chief and workers (the shared cluster: the two runs' trials may land on
different workers' processes, which must not matter)."""

from __future__ import annotations

from pathlib import Path

from .conftest import run_job

JOB = """
name: deterministic
data: {dataset: digits, split: {valid: 0.2, test: 0.2, seed: 42}}
model:
  builtin: mlp
  task: classification
  input: flatten
  hyperparameters:
    n_hidden: {int: [1, 2]}
    n_neurons: {int: [16, 32]}
    learning_rate: {float: [1.0e-3, 1.0e-2], sampling: log}
search: {algorithm: random, objective: val_loss, max_trials: 2, seed: 5}
train: {epochs: 2, batch_size: 32, deterministic: true}
"""


def _scores(store, path: Path) -> dict[str, tuple[float, dict]]:
    doc = run_job(store, path)
    assert doc["state"] == "completed", doc
    return {t["trial"]: (t["score"], t["metrics"]) for t in doc["trials"]}


def test_two_runs_of_a_deterministic_job_give_identical_scores(store, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    first, second = _scores(store, path), _scores(store, path)
    assert len(first) == 2
    assert first == second  # every trial: the same score and the same metrics, bit for bit
