"""Warm start through real processes: a warm-started Bayesian job's oracle holds the
earlier job's completed trials from its first trial on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tunecluster.api import Client
from tunecluster.engine.oracle_state import BOOK

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]


def test_warm_start_seeds_the_bayesian_oracle_before_its_first_trial(cluster) -> None:
    client = Client(cluster.url)
    start = time.monotonic()
    source = client.submit(ROOT / "examples" / "digits.yaml",
                           ["search.max_trials=3", "train.epochs=1", "name=warm-source"])
    old = source.wait(timeout=120)
    assert old["state"] == "completed"
    scores = {t["trial"]: t["score"] for t in old["trials"] if t["state"] == "COMPLETED"}
    assert len(scores) == 3

    warm = client.submit(ROOT / "examples" / "digits.yaml", [
        "search.algorithm=bayesian", "search.num_initial_points=3", "search.max_trials=1",
        "train.epochs=1", "name=warm-target", f"warm_start.from={source.id}"])
    new = warm.wait(timeout=120)
    assert new["state"] == "completed"
    assert [t["trial"] for t in new["trials"]] == ["3"]  # the job's own trials only

    _state_json, trials = client.store.jobs.oracle_state(warm.id)
    seeded = [f"w{t}" for t in sorted(scores)]
    # seeded before the first new trial was created: the suggestion saw them (with
    # num_initial_points=3, Bayesian optimization fit its Gaussian process on them).
    # The oracle keeps each trial's place in KerasTuner's start order in its record.
    starts = {tid: json.loads(raw)[BOOK]["start"] for tid, raw in trials.items()}
    assert sorted(starts, key=starts.__getitem__) == [*seeded, "3"]
    for tid in seeded:
        trial = json.loads(trials[tid])
        assert trial["status"] == "COMPLETED"
        assert trial["score"] == pytest.approx(scores[tid[1:]])
    print(f"warm start: {time.monotonic() - start:.1f}s")
