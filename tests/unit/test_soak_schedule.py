"""The soak's fault schedule (bench/soak.py) is drawn from its seed: the same seed gives
the same faults, each kind within its bounds; the jobs' algorithms cover every one."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import soak  # noqa: E402 - bench/soak.py, from the checkout


def test_the_same_seed_draws_the_same_schedule() -> None:
    kinds = list(soak.KINDS)
    first = soak.schedule(3, 600, kinds)
    assert first == soak.schedule(3, 600, kinds)
    assert first != soak.schedule(4, 600, kinds)
    assert soak.job_algorithms(3, 20) == soak.job_algorithms(3, 20)


def test_faults_cover_their_kinds_within_the_duration_and_bounds() -> None:
    faults = soak.schedule(5, 3600, list(soak.KINDS))
    assert {f.kind for f in faults} == set(soak.KINDS)
    assert all(0 < f.at_s < 3600 for f in faults)
    assert [f.at_s for f in faults] == sorted(f.at_s for f in faults)
    pauses = [f.length_s for f in faults if f.kind == "worker_pause"]
    assert pauses and all(0.5 * soak.LEASE_S <= s <= 2 * soak.LEASE_S for s in pauses)
    assert all(1 <= f.length_s <= 6 for f in faults if f.kind == "redis_pause")
    assert all(30 <= f.length_s <= 600 for f in faults if f.kind == "worker_skew")
    only = soak.schedule(5, 600, ["trial_kill"])
    assert only and {f.kind for f in only} == {"trial_kill"}


def test_every_algorithm_is_run_first() -> None:
    assert sorted(soak.job_algorithms(9, len(soak.ALGORITHMS))) == sorted(soak.ALGORITHMS)
