"""A broken artifacts store at finalize is the job's error, not a Redis outage.

Through real processes (Redis, a chief, a worker): the job's ``results.json`` cannot be
written (a directory stands in its place), so every finalize attempt fails on storage.
The chief retries a bounded number of times, then fails the job with the reason; it
never reports Redis as unavailable, and the job does not stay ``finalizing``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster
from tunecluster.store import Store

from .conftest import EXAMPLES, FAST_LIVENESS
from .invariants import assert_exactly_once

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_a_store_that_refuses_writes_at_finalize_fails_the_job_with_the_reason(
        tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    env = {**FAST_LIVENESS, "TUNECLUSTER_FINALIZE_ATTEMPTS": "2"}
    with LocalCluster(workers=1, artifacts=root, log_dir=tmp_path / "logs", env=env) as c:
        store = Store.from_url(c.url)
        job = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                        ("search.max_trials=1", "train.epochs=1")))
        blocker = root / job / "results.json"
        blocker.mkdir(parents=True)
        (blocker / "keep").write_text("a directory where the file should go")
        t0 = time.monotonic()
        results = wait(store, job, 150)
        took = time.monotonic() - t0
        assert results["state"] == "failed", results
        error = store.jobs.get(job).fields.get("error") or ""
        assert "finalize failed" in error and "results.json" in error, error
        assert "\n" not in error
        assert results["trials"][0]["state"] == "COMPLETED"  # the trial itself is kept
        assert_exactly_once(store, job, 1)
        chief_log = "".join(p.read_text(errors="replace")
                            for p in (tmp_path / "logs").glob("chief-*.log"))
        assert "redis unavailable" not in chief_log, chief_log[-2000:]
        assert "failed on storage or I/O, not Redis (attempt 1 of 2" in chief_log
    assert took < 120, took
