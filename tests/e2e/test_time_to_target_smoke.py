"""bench/time_to_target.py at its smallest settings (``--quick``): a real cluster and the
in-process peers each run once; the figures belong to bench/README.md, here only the
table's shape is checked: one row per configuration, each run recorded, none failed.
Ray Tune's ASHA is left out: starting Ray and its trial actors' TensorFlow takes longer
than a quick run (tests/e2e/test_ray.py runs Ray Tune)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["tc-random", "tc-hyperband", "tc-asha", "tc-tpe", "kt-hyperband", "optuna-tpe-sha"]
LABELS = ["tunecluster random", "tunecluster Hyperband", "tunecluster ASHA", "tunecluster TPE",
          "KerasTuner Hyperband", "Optuna TPE"]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_time_to_target_quick_prints_one_row_per_configuration() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "time_to_target.py"), "--quick",
                          "--json", "--only", *CONFIGS],
                         capture_output=True, text=True, timeout=200)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| configuration |")
    assert len(rows[1:]) == len(CONFIGS)
    for row, label in zip(rows[1:], LABELS, strict=True):
        assert row.split("|")[1].strip().startswith(label), (row, label)
    out = json.loads(lines[-1])
    assert [r["config"] for r in out["rows"]] == CONFIGS
    for row in out["rows"]:
        assert row["runs"] == 1 and row["errors"] == [] and row["failed_trials"] == 0, row
        assert row["trials_ended"] >= 1, row  # every configuration trained something
    assert any(line.startswith("goal (best tunecluster") for line in lines)
