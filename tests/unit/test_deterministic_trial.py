"""``train.deterministic``: a trial is seeded from the job's seed and its trial id, and
op determinism is on only while a deterministic job's trial runs (the trial process is
long-lived and serves other jobs)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_trial import SMALL, ListReporter, runtime

from tunecluster.spec import parse_spec
from tunecluster.worker.trial import TrialRequest, run_trial, trial_seed


def _run(tmp_path: Path, trial: str, **train: object) -> list[dict[str, float]]:
    rt = runtime(tmp_path, search={"objective": "val_loss", "seed": 3}, **train)
    reporter = ListReporter()
    run_trial(rt, TrialRequest(trial, dict(SMALL)), reporter)
    return [m for _, m in reporter.rows]


def test_a_deterministic_trial_repeats_in_the_same_process(tmp_path: Path) -> None:
    first = _run(tmp_path / "a", "0001", deterministic=True)
    assert _op_determinism()
    _run(tmp_path / "b", "0002", deterministic=False)  # another job's trial in between
    assert not _op_determinism()  # turned off again for a job that did not ask
    assert _run(tmp_path / "c", "0001", deterministic=True) == first


def test_the_seed_comes_from_the_job_seed_and_the_trial_id() -> None:
    base = {"name": "j", "data": {"dataset": "digits", "split": {"seed": 11}},
            "model": {"builtin": "mlp"}}
    seeded = parse_spec({**base, "search": {"seed": 7}})
    unseeded = parse_spec(base)
    assert trial_seed(seeded, "0001") == trial_seed(seeded, "0001")
    assert trial_seed(seeded, "0001") != trial_seed(seeded, "0002")
    assert trial_seed(seeded, "0001") != trial_seed(unseeded, "0001")  # split seed: 11
    assert 0 <= trial_seed(unseeded, "0001") < 2**31


def _op_determinism() -> bool:
    from tensorflow.python.framework import config

    return bool(config.is_op_determinism_enabled())
