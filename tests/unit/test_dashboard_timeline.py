"""The charts over wall time (dashboard/timeline.py): each trial's bar on its worker's
row from its claim to its end (idle gaps left empty), and the best score so far against
the seconds since the job was submitted, stepping only where it improves."""

from __future__ import annotations

from tunecluster.dashboard.timeline import best_over_time, timeline

T0 = 1_800_000_000_000  # the job's creation, ms


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(T0 + seconds * 1000)


def _trial(tid: str, worker: str, claimed: float | None, ended: float | None,
           state: str = "COMPLETED", score: float | None = 0.5) -> dict:
    return {"trial": tid, "state": state, "score": score, "worker": worker,
            "times": {"created": T0, "claimed": _ms(claimed), "ended": _ms(ended)}}


def _results(trials: list[dict], direction: str = "max") -> dict:
    return {"created": T0, "objective": {"name": "val_accuracy", "direction": direction},
            "trials": trials}


def test_each_trial_is_a_bar_from_its_claim_to_its_end_on_its_workers_row() -> None:
    fig = timeline(_results([
        _trial("0", "w1", 1.0, 4.0), _trial("1", "w2", 1.5, 3.0),
        _trial("2", "w1", 6.0, 9.0, state="FAILED", score=None),  # w1 idle from 4 to 6 s
        _trial("3", "w2", None, None, state="READY", score=None)]))  # not run: no bar
    by_state = {s["name"]: s for s in fig["data"]}
    assert set(by_state) == {"COMPLETED", "FAILED"}
    done = by_state["COMPLETED"]
    assert list(zip(done["text"], done["y"], done["base"], done["x"], strict=True)) == [
        ("0", "w1", 1.0, 3.0), ("1", "w2", 1.5, 1.5)]
    failed = by_state["FAILED"]
    assert (failed["base"], failed["x"], failed["y"]) == ([6.0], [3.0], ["w1"])


def test_a_running_trial_reaches_now_and_foreign_text_is_escaped() -> None:
    fig = timeline(_results([_trial("<b>7</b>", "<i>w</i>", 2.0, None, state="RUNNING")]),
                   now_ms=T0 + 5000)
    (bar,) = fig["data"]
    assert (bar["base"], bar["x"]) == ([2.0], [3.0])
    assert bar["text"] == ["&lt;b&gt;7&lt;/b&gt;"] and bar["y"] == ["&lt;i&gt;w&lt;/i&gt;"]


def test_best_score_steps_only_where_it_improves_in_the_order_trials_ended() -> None:
    fig = best_over_time(_results([
        _trial("a", "w1", 0, 5.0, score=0.6), _trial("b", "w2", 0, 3.0, score=0.7),
        _trial("c", "w1", 5, 8.0, score=0.65), _trial("d", "w2", 3, 9.0, score=0.9),
        _trial("e", "w1", 8, 10.0, state="FAILED", score=None)]))
    (line,) = fig["data"]
    assert line["x"] == [3.0, 9.0] and line["y"] == [0.7, 0.9] and line["text"] == ["b", "d"]
    low = best_over_time(_results([_trial("a", "w", 0, 2.0, score=0.3),
                                   _trial("b", "w", 2, 4.0, score=0.1)], direction="min"))
    assert low["data"][0]["y"] == [0.3, 0.1]


def test_no_trial_yet_is_an_empty_chart_that_says_so() -> None:
    for fig in (timeline(_results([])), best_over_time(_results([]))):
        assert fig["data"] == [] and "yet" in str(fig["layout"])


def test_pareto_front_keeps_the_trials_no_other_beats_on_every_part() -> None:
    from tunecluster.dashboard.pareto import pareto
    from tunecluster.store.results import objective_parts, pareto_front

    parts = objective_parts({"name": "multi_objective", "direction": "min", "parts": [
        {"name": "val_loss", "direction": "min"},
        {"name": "val_accuracy", "direction": "max"}]})
    assert parts == [("val_loss", "min"), ("val_accuracy", "max")]
    assert objective_parts({"name": "val_loss"}) is None and objective_parts("x") is None

    def t(tid: str, loss: float | None, acc: float, state: str = "COMPLETED") -> dict:
        return {"trial": tid, "state": state, "metrics": {"val_loss": loss, "val_accuracy": acc}}

    trials = [t("a", 0.5, 0.80), t("b", 0.4, 0.85),  # b beats a on both
              t("c", 0.3, 0.70), t("d", 0.6, 0.90),  # c and d trade off with b
              t("e", 0.4, 0.85),  # ties b: neither dominates the other
              t("f", 0.1, 0.99, state="FAILED"), t("g", None, 0.99)]  # not on the front
    assert pareto_front(trials, parts) == ["b", "c", "d", "e"]
    assert pareto_front(trials, None) is None
    fig = pareto({"trials": trials, "pareto": ["b", "c", "d", "e"]}, parts)
    dominated, front = fig["data"]
    assert dominated["text"] == ["a"]
    assert front["x"] == [0.3, 0.4, 0.4, 0.6] and front["text"] == ["c", "b", "e", "d"]
