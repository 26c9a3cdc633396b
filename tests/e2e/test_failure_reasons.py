"""A failed trial's reason is shown beside it where the user looks: ``watch``'s table
and the dashboard's trial table (its API field and the rendered page's column).
Real Redis, chief and workers."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from tunecluster.api import Client
from tunecluster.dashboard.app import create_app

from .conftest import cli
from .test_exit_codes import _nan_job

REASON = "loss is nan at epoch 1"


def test_watch_and_the_dashboard_show_why_a_trial_failed(cluster, tmp_path: Path) -> None:
    job = Client(cluster.url).submit(_nan_job(tmp_path))
    out = cli("watch", job.id, "--redis", cluster.url)
    rows = [ln for ln in out.stdout.splitlines() if "FAILED" in ln]
    assert rows and REASON in rows[0], out.stdout  # the reason on the trial's own row
    with TestClient(create_app(cluster.url), base_url="http://127.0.0.1") as http:
        doc = http.get(f"/api/jobs/{job.id}").json()
    trial = doc["trials"][0]
    assert trial["state"] == "FAILED" and trial["reason"] == REASON, trial
    assert len(trial["reason"]) <= 80 and "\n" not in trial["reason"]
    script = (Path(__file__).parents[2] / "src/tunecluster/dashboard/static/app.js").read_text()
    assert '["reason", (t) => t.reason' in script  # the trial table's column
