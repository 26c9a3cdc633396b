"""``tunecluster run --dashboard``: the embedded run serves the dashboard while the job
runs, prints its URL, and stops it (and every role) when the command ends."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def test_run_serves_the_dashboard_while_the_job_runs(tmp_path: Path) -> None:
    env = {**os.environ, "TUNECLUSTER_CLUSTER_FILE": str(tmp_path / "no-cluster.json")}
    env.pop("TUNECLUSTER_REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunecluster", "run", str(ROOT / "examples" / "digits.yaml"),
         "--workers", "1", "--set", "search.max_trials=2", "--set", "train.epochs=1",
         "--artifacts", str(tmp_path / "artifacts"), "--dashboard", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        url = None
        for line in proc.stderr:  # the URL comes before the job is submitted
            found = re.match(r"dashboard: (http://127\.0\.0\.1:\d+)$", line.strip())
            if found:
                url = found.group(1)
                break
        assert url is not None, "no dashboard URL printed"
        seen: list[dict] = []  # the Jobs view's rows
        while proc.poll() is None and not seen:  # the job, as the page's API shows it
            try:
                seen = _get(f"{url}/api/jobs")
            except OSError:
                break  # the run ended between two reads
        out, _ = proc.communicate(timeout=150)
    finally:
        proc.kill()
    results = json.loads(out)
    assert results["state"] == "completed" and len(results["trials"]) == 2
    assert [r["job"] for r in seen] == [results["job"]]
    assert "redis://" not in json.dumps(seen)  # the Redis URL never reaches a browser
    with pytest.raises(OSError):  # stopped with the command
        _get(f"{url}/api/jobs")
