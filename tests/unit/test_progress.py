"""The search's progress views: what the notebook display shows, and which view runs."""

from __future__ import annotations

from typing import Any

from tunecluster.api import progress


def _results(trials: list[dict[str, Any]], state: str = "running",
             direction: str = "max") -> dict[str, Any]:
    scored = [t for t in trials if t["score"] is not None]
    best = max(scored, key=lambda t: t["score"]) if scored else None
    return {"job": "j-1", "state": state,
            "objective": {"name": "val_accuracy", "direction": direction},
            "best": best and {"trial": best["trial"], "score": best["score"]},
            "trials": trials}


def _trial(trial: str, state: str, score: float | None, epochs: int = 3,
           **hp: Any) -> dict[str, Any]:
    return {"trial": trial, "state": state, "score": score, "epochs": epochs,
            "hyperparameters": hp or {"units": 32}}


def test_the_table_shows_the_best_first_then_the_running_trials() -> None:
    page, plain = progress.render(_results([
        _trial("t0", "COMPLETED", 0.5), _trial("t1", "RUNNING", None, epochs=1),
        _trial("t2", "COMPLETED", 0.9), _trial("t3", "FAILED", None)]), 8, 75.0)
    order = [page.index(f"<td>{t}</td>") for t in ("t2", "t0", "t1", "t3")]
    assert order == sorted(order)
    assert '<progress value="3" max="8"' in page and "3/8 trials done, 1 running" in page
    assert "best val_accuracy 0.9 (trial t2)" in page and "00h 01m 15s" in page
    assert plain.splitlines()[1].split()[:3] == ["t2", "COMPLETED", "0.9"]


def test_a_minimizing_objective_ranks_the_lowest_first() -> None:
    page, _ = progress.render(_results([_trial("a", "COMPLETED", 0.3),
                                        _trial("b", "COMPLETED", 0.1)],
                                       direction="min"), 2, 0)
    assert page.index("<td>b</td>") < page.index("<td>a</td>")


def test_an_unknown_total_shows_a_bar_without_an_end() -> None:
    page, _ = progress.render(_results([_trial("a", "RUNNING", None)]), None, 0)
    assert "<progress style" in page and "0 trials done" in page


def test_hyperparameter_values_are_escaped() -> None:
    page, _ = progress.render(_results([_trial("a", "COMPLETED", 0.1,
                                               act="<script>x</script>")]), 1, 0)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_the_table_is_bounded() -> None:
    trials = [_trial(f"t{i:03d}", "COMPLETED", i / 1000) for i in range(200)]
    page, _ = progress.render(_results(trials), 200, 0)
    assert page.count("<tr>") == 1 + 20 and "<td>t199</td>" in page


def test_verbose_zero_shows_nothing_and_a_terminal_gets_lines() -> None:
    assert progress.view_for(0, 10) is None
    assert not progress.in_notebook()  # pytest is no Jupyter kernel
    assert isinstance(progress.view_for(1, 10), progress.TerminalView)
