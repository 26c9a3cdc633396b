"""The one-line reason shown beside a failed trial (render.failure_reason), in the
notebook's live table and the terminal tables."""

from __future__ import annotations

from rich.console import Console

from tunecluster import render
from tunecluster.api import progress

TRACEBACK = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
             "tunecluster.errors.TrialFailed: loss is nan at epoch 2\n")


def _results() -> dict:
    trial = {"trial": "0001", "state": "FAILED", "score": None, "epochs": 2, "attempts": 1,
             "hyperparameters": {"units": 8}, "error": TRACEBACK, "metrics": {}}
    ok = {**trial, "trial": "0002", "state": "COMPLETED", "score": 0.9, "error": None}
    return {"job": "j-000001", "name": "j", "state": "completed", "trials": [trial, ok],
            "objective": {"name": "val_accuracy", "direction": "max"}, "best": None}


def test_the_reason_is_the_last_line_short() -> None:
    assert render.failure_reason(TRACEBACK) == "loss is nan at epoch 2"
    long = render.failure_reason("ValueError: " + "x" * 200)
    assert len(long) == 80 and long.endswith("…")
    assert render.failure_reason(None) == ""


def test_the_notebook_table_and_the_leaderboard_show_it() -> None:
    page, plain = progress.render(_results(), 2, 3.0)
    assert "loss is nan at epoch 2" in page
    assert [ln for ln in plain.splitlines() if "FAILED" in ln][0].endswith(
        "loss is nan at epoch 2")
    console = Console(width=200, record=True)
    console.print(render.leaderboard_table(_results()))
    row = [ln for ln in console.export_text().splitlines() if "FAILED" in ln][0]
    assert "loss is nan at epoch 2" in row
