"""Unit checks behind the worker-fault e2e tests: JSON without NaN, ``train.trial_timeout``,
per-attempt files and their resume order, non-finite side metrics, refused finishes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tunecluster.artifacts import attempt_dir, resume_dirs, trial_dir, trial_model
from tunecluster.errors import SpecError
from tunecluster.spec import parse_spec
from tunecluster.store import Claim, codec
from tunecluster.store.results import _trial_row
from tunecluster.worker.child import refused, run_one

BASE = {"name": "j", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"}}


# --- codec -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    float("nan"), float("inf"), -float("inf"), np.float32("-inf"), np.float64("nan"),
    np.array([1.0, np.inf]), {"a": {"b": [float("nan"), (np.float16("inf"),)]}},
])
def test_codec_never_writes_nan_or_infinity(value: Any) -> None:
    text = codec.dumps({"m": value})
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_codec_keeps_finite_values_and_nulls_non_finite_ones() -> None:
    text = codec.dumps({"loss": 0.5, "neg": -float("inf"), "n": np.int64(3), "s": "inf"})
    assert json.loads(text) == {"loss": 0.5, "neg": None, "n": 3, "s": "inf"}


def test_results_row_with_null_metrics() -> None:
    row = _trial_row({"trial": "00", "state": "COMPLETED", "score": "0.9",
                      "metrics": codec.dumps({"val_accuracy": 0.9, "val_x": float("nan")}),
                      "model": "job/trials/00/attempt-1/model.keras"})
    assert row["metrics"] == {"val_accuracy": 0.9, "val_x": None}
    assert row["model"] == "job/trials/00/attempt-1/model.keras"


# --- spec ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, "3s", True, float("nan"), float("inf"), [3]])
def test_trial_timeout_rejects_bad_values_in_one_line(value: Any) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, "train": {"trial_timeout": value}})
    text = str(info.value)
    assert text.startswith("train.trial_timeout: ") and "\n" not in text
    assert "> 0" in text


def test_trial_timeout_default_and_values() -> None:
    assert parse_spec(BASE).train.trial_timeout is None
    assert parse_spec({**BASE, "train": {"trial_timeout": 3}}).train.trial_timeout == 3.0
    assert parse_spec({**BASE, "train": {"trial_timeout": None}}).train.trial_timeout is None


# --- artifacts -------------------------------------------------------------------------


def test_resume_candidates_newest_attempt_first_then_the_legacy_directory(tmp_path) -> None:
    base = trial_dir(tmp_path, "job", "00")
    names = ["attempt-1-1700000000000", "attempt-2-1700000005000", "attempt-2",
             "attempt-2-1700000009000", "attempt-3", "attempt-4-1700000010000",
             "attempt-x", "attempt-1-", "other", ".last.npz.12.npz"]
    # the higher attempt first, then the later start (a run whose claim Redis lost and
    # gave again under the same number), then a run of an older version (no start time);
    # a higher attempt than this run's is no earlier run of it; other names are no runs
    assert resume_dirs(base, 3, names) == [
        base / "attempt-3", base / "attempt-2-1700000009000", base / "attempt-2-1700000005000",
        base / "attempt-2", base / "attempt-1-1700000000000", base]
    assert resume_dirs(base, 1, []) == [base]
    assert attempt_dir(base, 2) == base / "attempt-2"
    assert attempt_dir(base, 2, "1700000009000") == base / "attempt-2-1700000009000"


def test_a_claim_redis_lost_in_a_rollback_runs_in_a_directory_of_its_own(tmp_path) -> None:
    """Redis restarted from a snapshot taken before a trial was claimed: the trial is
    claimed again under the same attempt number while the lost claim's run may still
    write. The two runs' directories differ (each is named by its claim's start)."""
    from tunecluster.cluster import RedisServer
    from tunecluster.store import Store

    with RedisServer() as server:
        store = Store.from_url(server.url)
        job = store.jobs.submit("job", json.dumps(BASE), {}, 0, "native")
        store.queue.enqueue(job, "00", {"x": 1}, 1, "{}")
        store.client.save()  # the snapshot Redis goes back to
        lost = store.queue.claim("w1", 30)
        server.stop(kill=True)
        server.start()
        store = Store.from_url(server.url)
        again = store.queue.claim("w2", 30)
    assert lost is not None and again is not None
    assert (lost.trial, lost.attempt) == (again.trial, again.attempt) == ("00", 1)
    assert lost.started.isdigit() and again.started.isdigit()
    base = trial_dir(tmp_path, job, "00")
    assert (attempt_dir(base, lost.attempt, lost.started)
            != attempt_dir(base, again.attempt, again.started))


def test_trial_model_follows_the_record_and_stays_inside_the_trial(tmp_path: Path) -> None:
    base = trial_dir(tmp_path, "job", "00")
    assert trial_model(tmp_path, "job", "00", "job/trials/00/attempt-2/model.keras") == (
        base / "attempt-2" / "model.keras").resolve()
    assert trial_model(tmp_path, "job", "00", None) == base / "model.keras"
    for escaping in ("../../etc/passwd", "job/trials/01/attempt-1/model.keras", "/etc/passwd"):
        assert trial_model(tmp_path, "job", "00", escaping) == base / "model.keras"


# --- the trial process -------------------------------------------------------------------


class _RefusingQueue:
    def finish(self, *args: Any) -> bool:
        return False


class _Store:
    queue = _RefusingQueue()


def test_a_refused_finish_is_lost_not_success() -> None:
    outcome = refused(Claim("job", "00", 2, {}), "completed")
    assert outcome["outcome"] == "lost" and "attempt 2" in outcome["error"]


def test_a_failed_trial_whose_finish_is_refused_is_lost(monkeypatch, tmp_path) -> None:
    import tunecluster.worker.child as child

    def broken(*_args: Any) -> Any:
        raise RuntimeError("cannot load")

    monkeypatch.setattr(child, "_runtime", broken)
    outcome = run_one(_Store(), None, str(tmp_path), "w1",  # type: ignore[arg-type]
                      {"job": "job", "trial": "00", "attempt": 1, "values": {}})
    assert outcome["outcome"] == "lost"


def test_non_finite_side_metric_does_not_fail_the_trial(tmp_path: Path) -> None:
    from tests.unit.test_trial import ListReporter, custom, runtime

    from tunecluster.worker.trial import TrialRequest, read_checkpoint, run_trial

    source = '''
import keras

def neg_inf(y_true, y_pred):
    return keras.ops.log(keras.ops.zeros_like(y_pred[:, :1]))

def build_model(hp):
    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", neg_inf])
    return model
'''
    rt = runtime(tmp_path, model=custom(source))
    reporter = ListReporter()
    result = run_trial(rt, TrialRequest("t1", {}, attempt=1, isolated=True,
                                        started="1700000000000"), reporter)
    assert reporter.epochs == [1, 2]
    assert math.isinf(reporter.rows[0][1]["val_neg_inf"])
    assert not math.isfinite(result.metrics["val_neg_inf"]) and result.score > 0
    assert "null" in codec.dumps(result.metrics)
    # this run's own directory; its checkpoint's history holds null
    first = rt.trial_dir("t1") / "attempt-1-1700000000000"
    assert Path(result.model_path) == first / "model.keras"
    meta, _ = read_checkpoint(first)
    assert meta["history"][0]["val_neg_inf"] is None
    # a retry resumes from it, writes attempt-2 only, and replays the history
    again = ListReporter()
    retried = run_trial(rt, TrialRequest("t1", {}, attempt=2, isolated=True, resume=True,
                                         started="1700000060000"), again)
    assert retried.resumed_from_epoch == 2 and again.epochs == [1, 2]
    assert Path(retried.model_path).parent.name == "attempt-2-1700000060000"
