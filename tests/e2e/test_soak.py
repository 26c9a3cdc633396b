"""bench/soak.py for a short while: a real Redis (AOF), two chiefs, three workers and
small jobs of every native algorithm under a seeded schedule of every fault kind, then
its checks. The test asserts that faults of several kinds were applied, that jobs
ended, and that every check held (the soak exits 1 when one does not)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_a_short_soak_of_random_faults_loses_nothing(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--seed", "13",
                          "--duration", "75", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=560)
    lines = run.stdout.strip().splitlines()
    assert lines, run.stderr[-3000:]
    report = json.loads(lines[-1])
    failed = [c for c in report["checks"] if not c["ok"]]
    assert run.returncode == 0 and not failed, (failed, "\n".join(lines[-60:]))
    assert [c["name"] for c in report["checks"]] == [
        "no_role_died", "jobs_final", "no_job_failed", "exactly_once", "models",
        "results_json", "redis_memory", "no_process_left", "rss_bounded"]
    assert sum(report["faults"].values()) >= 6 and len(report["faults"]) >= 4, report
    # work was done: jobs seen completed, which a rollback of Redis cannot take back
    # (one CI run ended with 2 completed and 4 lost with rollbacks; 10-11 seen here)
    assert report["jobs_seen_completed"] >= 3, report
