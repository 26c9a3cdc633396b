"""How gang trials look in the terminal: who trained each one, in rank order."""

from __future__ import annotations

from rich.console import Console

from tunecluster.render import event_line, leaderboard_table


def _results(workers: list[list[str]]) -> dict:
    trials = [{"trial": str(i), "state": "COMPLETED", "score": 0.9 - i / 10, "epochs": 2,
               "attempts": 1, "hyperparameters": {"units": 8},
               "workers": [{"worker": w, "rank": r} for r, w in enumerate(ws)]}
              for i, ws in enumerate(workers)]
    return {"name": "n", "job": "j", "state": "completed", "trials": trials,
            "objective": {"name": "val_accuracy", "direction": "max"}}


def _text(results: dict) -> str:
    console = Console(width=200, record=True)
    console.print(leaderboard_table(results))
    return console.export_text()


def test_a_gang_job_shows_its_members_and_a_single_one_does_not() -> None:
    gang = _text(_results([["w1", "w2"], ["w2", "w1"]]))
    assert "workers" in gang and "w1 + w2" in gang and "w2 + w1" in gang
    single = _text(_results([["w1"], ["w2"]]))
    assert "workers" not in single


def test_watch_prints_the_members_of_a_started_gang() -> None:
    line = event_line("j", "trial_started", {"trial": "0", "worker": "w1", "attempt": 1,
                                             "workers": ["w1", "w2"]})
    assert line == "trial started 0 worker=w1, attempt=1, workers=w1 + w2"
