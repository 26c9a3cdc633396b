"""A broken artifacts store at finalize is the job's error, not a Redis outage; one
that refuses a trial's writes for a while costs the trial nothing.

Through real processes (Redis, a chief, a worker): the job's ``results.json`` cannot be
written (a directory stands in its place), so every finalize attempt fails on storage.
The chief retries a bounded number of times, then fails the job with the reason; it
never reports Redis as unavailable, and the job does not stay ``finalizing``."""

from __future__ import annotations

import subprocess
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


def _logs(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log"))


def _immutable(root: Path, on: bool) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["chattr", "-R", "-f", "+i" if on else "-i", str(root)],
                          capture_output=True, check=False)


@pytest.fixture
def immutable_dirs(tmp_path: Path, require) -> None:
    """The tests below make directories refuse writes with ``chattr +i``: here it is
    checked that a directory so made really refuses one (root's are not refused by
    permission bits)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    _immutable(probe, True)
    try:
        (probe / "x").write_bytes(b"")
    except PermissionError:
        return
    finally:
        _immutable(probe, False)
    require("chattr +i (e2fsprogs, on a file system that has it)", "an immutable"
            " directory stands in for a store that refuses writes")


def test_a_trial_whose_artifacts_refuse_writes_for_a_while_is_retried_without_spending_an_attempt(
        tmp_path: Path, immutable_dirs: None) -> None:
    """The artifacts directory refuses every write (immutable, as a volume that lost its
    write access for a while; root writes through permission bits) when the trial starts,
    and takes writes again 4 s later. The trial has no retry to spend: it completes, once,
    after one retry that cost it nothing; the job completes. (Before, the refused
    checkpoint write failed the trial, and the job with it.)"""
    root = tmp_path / "artifacts"
    with LocalCluster(workers=1, artifacts=root, log_dir=tmp_path / "logs",
                      env=FAST_LIVENESS) as c:
        store = Store.from_url(c.url)
        _immutable(root, True)
        try:
            job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
                "search.max_trials=1", "train.epochs=2", "search.max_retries_per_trial=0")))
            deadline = time.monotonic() + 120
            while "waiting up to 60 s for it to take writes again" not in _logs(tmp_path):
                assert time.monotonic() < deadline, _logs(tmp_path)[-3000:]
                assert store.jobs.get(job).state in ("queued", "running")
                time.sleep(0.2)
            assert "the artifacts store refused a write: PermissionError" in _logs(tmp_path)
            time.sleep(2.0)  # the trial waits; the store is back after that
        finally:
            _immutable(root, False)
        results = wait(store, job, 150)
        assert results["state"] == "completed", results
        rows = assert_exactly_once(store, job, 1)
        assert rows[0]["state"] == "COMPLETED", rows
        retries = [e.data for e in store.events.read(job, count=1000)
                   if e.type == "trial_retry"]
        assert len(retries) == 1, retries
        assert "the artifacts store refused a write: PermissionError" in retries[0]["reason"]
        assert str(retries[0]["attempt"]) == "0", retries  # the attempt given back


def test_a_trial_whose_own_directory_never_takes_writes_spends_its_attempts(
        tmp_path: Path, immutable_dirs: None) -> None:
    """The job's directory takes writes (the worker's probe succeeds) but its trials'
    directory never does: the attempt is given back a few times only, then spent, and
    the trial fails with the reason, never looping without end."""
    from tunecluster.worker.storage import FREE_STORAGE_RETRIES, STORE_REFUSED

    root = tmp_path / "artifacts"
    with LocalCluster(workers=0, artifacts=root, log_dir=tmp_path / "logs",
                      env=FAST_LIVENESS) as c:
        store = Store.from_url(c.url)
        job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
            "search.max_trials=1", "train.epochs=1", "search.max_retries_per_trial=0")))
        trials_dir = root / job / "trials"
        trials_dir.mkdir(parents=True)
        _immutable(trials_dir, True)
        try:
            c.start_worker()
            results = wait(store, job, 150)
        finally:
            _immutable(trials_dir, False)
        assert results["state"] == "failed", results
        [trial] = results["trials"]
        assert trial["state"] == "FAILED" and trial["error"].startswith(STORE_REFUSED), trial
        retries = [e.data for e in store.events.read(job, count=1000)
                   if e.type == "trial_retry"]
        assert len(retries) == FREE_STORAGE_RETRIES, retries  # given back, then spent
        assert all(str(r["attempt"]) == "0" for r in retries), retries
        assert_exactly_once(store, job, 1)
