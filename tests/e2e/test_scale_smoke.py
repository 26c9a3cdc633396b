"""bench/scale.py at a small size: many simulated workers (the real Worker claim loop,
heartbeats and queue scripts) against a real Redis and the real chief process. The
figures themselves belong to bench/README.md; here only their shape and the
exactly-once outcome are checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tunecluster.cluster import RedisServer
from tunecluster.store import Store

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"workers", "trials", "trial_seconds", "wall_s", "ideal_s", "efficiency",
        "trials_per_s", "chief_round_ms_p50", "chief_round_ms_p99"}


def test_scale_smoke_every_trial_completes_exactly_once() -> None:
    with RedisServer() as server:
        run = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "scale.py"), "--workers", "50",
             "--trial-seconds", "0.2", "--trials", "200", "--redis", server.url, "--json"],
            capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr[-2000:]
        out = json.loads(run.stdout.strip().splitlines()[-1])
        assert set(out) == KEYS
        assert (out["workers"], out["trials"], out["trial_seconds"]) == (50, 200, 0.2)
        assert out["ideal_s"] == 0.8  # 4 waves of 0.2 s
        assert 0 < out["efficiency"] <= 1 and out["wall_s"] >= out["ideal_s"]
        assert out["chief_round_ms_p99"] >= out["chief_round_ms_p50"] > 0

        store = Store.from_url(server.url)
        (job,) = store.client.zrange(store.keys.jobs_all, 0, -1)
        rows = store.jobs.trials(job)
        assert len(rows) == 200
        assert all(r["state"] == "COMPLETED" for r in rows)
        completed = [e.data["trial"] for e in store.events.read(job, "0-0", count=10_000)
                     if e.type == "trial_completed"]
        assert sorted(completed) == sorted(r["trial"] for r in rows)  # once each
        assert store.client.zcard(store.keys.leases) == 0
