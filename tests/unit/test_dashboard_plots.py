"""The dashboard's pure parts: charts (plotly figure JSON), importance, the Jobs view's
summary, a trial's attempts from its events, the access rules and the report's HTML."""

from __future__ import annotations

import json
import math
import random
import socket

import pytest

from tunecluster.dashboard import importance, plots
from tunecluster.dashboard.auth import check_bind, cookie_value, is_loopback
from tunecluster.dashboard.data import attempts, summary
from tunecluster.store import Event

SPACE = {"space": [
    {"class_name": "Int", "config": {"name": "n_hidden", "min_value": 1, "max_value": 3,
                                     "sampling": "linear"}},
    {"class_name": "Float", "config": {"name": "learning_rate", "min_value": 1e-4,
                                       "max_value": 1e-2, "sampling": "log"}},
    {"class_name": "Choice", "config": {"name": "optimizer", "values": ["sgd", "adam"]}},
]}


def trial(tid: str, state: str, score: float | None, **hps: object) -> dict:
    return {"trial": tid, "state": state, "score": score, "hyperparameters": hps,
            "epochs": 3, "attempts": 1, "worker": "w1", "error": None, "metrics": {}}


def results(trials: list[dict], direction: str = "max", best: str | None = None) -> dict:
    return {"job": "j-abc123", "name": "j", "state": "running",
            "objective": {"name": "val_accuracy", "direction": direction},
            "best": {"trial": best, "score": 0.9, "hyperparameters": {}} if best else None,
            "trials": trials, "counts": {}}


def sample(n: int = 8, seed: int = 3) -> dict:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lr = 10 ** rng.uniform(-4, -2)
        rows.append(trial(f"{i:02d}", "COMPLETED", 1 - abs(math.log10(lr) + 3) / 2,
                          n_hidden=rng.randint(1, 3), learning_rate=lr,
                          optimizer=rng.choice(["sgd", "adam"])))
    return results(rows, best="00")


def test_space_info_reads_the_keras_tuner_config_and_the_spec() -> None:
    info = plots.space_info(SPACE, {"model": {"hyperparameters": {
        "units": {"int": [8, 64], "sampling": "log"}, "act": {"choice": ["relu", "tanh"]}}}})
    assert list(info) == ["n_hidden", "learning_rate", "optimizer", "units", "act"]
    assert info["learning_rate"] == {"kind": "float", "log": True, "values": []}
    assert info["n_hidden"]["log"] is False
    assert info["optimizer"]["values"] == ["sgd", "adam"]
    assert info["units"]["log"] is True and info["act"]["values"] == ["relu", "tanh"]


def test_learning_curves_one_trace_per_trial_best_highlighted_failed_marked() -> None:
    doc = results([trial("01", "COMPLETED", 0.9), trial("02", "FAILED", None),
                   trial("03", "RUNNING", None)], best="01")
    histories = {"01": {1: {"val_accuracy": 0.5}, 2: {"val_accuracy": 0.9}},
                 "02": {1: {"val_accuracy": 0.3}, 2: {"loss": 1.0}},
                 "03": {1: {"val_accuracy": 0.4}}}
    fig = plots.learning_curves(doc, histories)
    traces = {t["name"]: t for t in fig["data"]}
    assert set(traces) == {"01", "02", "03"}
    assert traces["01"]["x"] == [1, 2] and traces["01"]["y"] == [0.5, 0.9]
    assert traces["02"]["x"] == [1], "epochs without the metric are left out"
    assert traces["01"]["line"]["width"] > traces["03"]["line"]["width"]
    assert traces["01"]["line"]["color"] == plots.BEST_COLOR
    assert traces["02"]["line"]["dash"] == "dash" and traces["02"]["marker"]["symbol"][-1] == "x"
    assert fig["data"][-1]["name"] == "01", "the best trial is drawn on top"
    json.dumps(fig)  # plain JSON


@pytest.mark.parametrize("direction,expected", [("max", [0.5, 0.7, 0.7, 0.9]),
                                                ("min", [0.5, 0.5, 0.3, 0.3])])
def test_optimization_history_running_best(direction: str, expected: list[float]) -> None:
    doc = results([trial("1", "COMPLETED", 0.5), trial("2", "COMPLETED", 0.7),
                   trial("3", "FAILED", None), trial("4", "COMPLETED", 0.3),
                   trial("5", "COMPLETED", 0.9)], direction=direction)
    scores, best = plots.optimization_history(doc)["data"]
    assert scores["x"] == [1, 2, 4, 5] and scores["y"] == [0.5, 0.7, 0.3, 0.9]
    assert best["y"] == expected
    assert best["line"]["shape"] == "hv"


def test_parallel_coordinates_log_and_categorical_axes() -> None:
    doc = sample()
    info = plots.space_info(SPACE)
    (trace,) = plots.parallel_coordinates(doc, info)["data"]
    dims = {d["label"]: d for d in trace["dimensions"]}
    assert set(dims) == {"n_hidden", "learning_rate (log)", "optimizer", "val_accuracy"}
    lr = [t["hyperparameters"]["learning_rate"] for t in doc["trials"]]
    assert dims["learning_rate (log)"]["values"] == pytest.approx([math.log10(v) for v in lr])
    assert dims["optimizer"]["ticktext"] == ["sgd", "adam"]
    assert set(dims["optimizer"]["values"]) <= {0, 1}
    assert trace["line"]["color"] == [t["score"] for t in doc["trials"]]
    assert plots.parallel_coordinates(results([]), info)["data"] == []


def test_slice_plots_use_log_axes_where_the_sampling_is_log() -> None:
    fig = plots.slice_plots(sample(), plots.space_info(SPACE))
    layout = fig["layout"]
    axes = {layout[k]["title"]["text"]: layout[k] for k in layout if k.startswith("xaxis")}
    assert axes["learning_rate"]["type"] == "log"
    assert axes["optimizer"]["type"] == "category"
    assert "type" not in axes["n_hidden"]
    assert len(fig["data"]) == 3
    assert [t["xaxis"] for t in fig["data"]] == ["x", "x2", "x3"]


def test_importance_waits_for_five_completed_trials() -> None:
    found = importance.hyperparameter_importance(sample(4), plots.space_info(SPACE))
    assert found["importances"] == {} and "5 completed trials" in found["reason"]
    assert "permutation importance" in found["method"] and "random forest" in found["method"]


def test_importance_finds_the_hyperparameter_that_drives_the_score() -> None:
    doc = sample(24)  # the score depends on the learning rate alone
    found = importance.hyperparameter_importance(doc, plots.space_info(SPACE))
    shares = found["importances"]
    assert set(shares) == {"n_hidden", "learning_rate", "optimizer"}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert max(shares, key=shares.get) == "learning_rate"
    assert shares["learning_rate"] > 0.6
    # deterministic for the same trials
    assert importance.hyperparameter_importance(doc, plots.space_info(SPACE)) == found
    bars = plots.importance_bars(found)["data"][0]
    assert bars["y"][-1] == "learning_rate", "most important on top"


def test_compare_overlays_each_jobs_running_best() -> None:
    a = results([trial("1", "COMPLETED", 0.5), trial("2", "COMPLETED", 0.7)])
    b = {**results([trial("1", "COMPLETED", 0.2)]), "job": "k-def456"}
    fig = plots.compare_histories([a, b])
    assert [t["meta"]["job"] for t in fig["data"]] == ["j-abc123", "k-def456"]
    assert fig["data"][0]["y"] == [0.5, 0.7]


def test_trial_metrics_puts_losses_and_the_rest_on_two_axes() -> None:
    fig = plots.trial_metrics("01", {1: {"loss": 1.0, "val_accuracy": 0.5},
                                     2: {"loss": 0.5, "val_accuracy": 0.7}})
    axes = {t["name"]: t["yaxis"] for t in fig["data"]}
    assert axes == {"loss": "y", "val_accuracy": "y2"}


def test_summary_progress_elapsed_and_time_left() -> None:
    doc = {**results([trial("1", "COMPLETED", 0.5), trial("2", "FAILED", None),
                      trial("3", "RUNNING", None)]),
           "counts": {"COMPLETED": 1, "FAILED": 1, "RUNNING": 1}, "created": 1_000,
           "finished": None, "scheduler": "native", "error": None}
    from tunecluster.store.records import JobRecord

    record = JobRecord.parse("j", {"state": "running", "created": "1000", "started": "1000",
                                   "priority": "3",
                                   "spec": '{"search": {"max_trials": 6}}'})
    row = summary(doc, record, now_ms=61_000)
    assert (row["done"], row["total"], row["elapsed_s"]) == (2, 6, 60.0)
    assert row["eta_s"] == 120.0, "30 s per ended trial, 4 left"
    assert row["priority"] == 3
    assert summary({**doc, "state": "completed", "finished": 31_000}, record,
                   61_000)["eta_s"] is None


def test_attempts_from_a_trials_events() -> None:
    events = [Event("1000-0", "trial_started", {"trial": "01", "worker": "a", "attempt": 1}),
              Event("2000-0", "epoch", {"trial": "01", "epoch": 1}),
              Event("3000-0", "trial_retry", {"trial": "01", "worker": "a", "attempt": 1,
                                              "reason": "lease expired"}),
              Event("4000-0", "trial_started", {"trial": "01", "worker": "b", "attempt": 2,
                                                "workers": ["b", "c"]}),
              Event("5000-0", "trial_completed", {"trial": "01", "worker": "b", "attempt": 2})]
    first, second = attempts(events)
    assert first == {"attempt": 1, "worker": "a", "workers": None, "start": 1000,
                     "end": 3000, "ended": "retried", "reason": "lease expired"}
    assert (second["worker"], second["ended"], second["end"]) == ("b", "completed", 5000)
    assert second["workers"] == ["b", "c"]  # a gang's members, rank 0 first


def test_check_bind_needs_a_real_token_off_loopback() -> None:
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "t" * 24)
    with pytest.raises(ValueError, match="TUNECLUSTER_DASHBOARD_TOKEN"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ValueError, match="at least 16"):
        check_bind("0.0.0.0", "short")
    with pytest.raises(ValueError, match="example"):
        check_bind("127.0.0.1", "change-me")
    assert "tok" not in cookie_value("tok" * 8) and len(cookie_value("tok" * 8)) == 64


def test_loopback_is_decided_on_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {"localhost": ["127.0.0.1", "::1"], "evil.example": ["127.0.0.1", "203.0.113.9"]}

    def resolve(host: str, *args: object, **kwargs: object) -> list[tuple]:
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(0, 0, 0, "", (a, 0)) for a in names[host]]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1", "localhost"):
        assert is_loopback(host), host
    for host in ("127.evil.example", "127.0.0.1.nip.io", "evil.example", "0.0.0.0", "::",
                 "10.0.0.7", "", "[", "1.2.3.4"):
        assert not is_loopback(host), host
    with pytest.raises(ValueError, match="TUNECLUSTER_DASHBOARD_TOKEN"):
        check_bind("127.evil.example", None)
    for blank in ("", " " * 20, "\t" * 16, "x" * 15 + " " * 5):
        with pytest.raises(ValueError, match="at least 16 characters with no spaces"):
            check_bind("127.0.0.1", blank)


def test_report_html_is_self_contained() -> None:
    from tunecluster.dashboard.report import render_report

    doc = sample(6)
    info = plots.space_info(SPACE)
    found = importance.hyperparameter_importance(doc, info)
    doc.update(summary={"state": "completed", "done": 6, "total": 6, "counts": {"COMPLETED": 6},
                        "best": 0.9, "best_trial": "00", "elapsed_s": 75.0,
                        "scheduler": "native", "error": None},
               test={"accuracy": 0.95}, importance=found, spec={"search": {}},
               figures=plots.job_figures(doc, {}, info, found))
    doc["trials"][0]["error"] = "</script><script>alert(1)</script>"
    text = render_report(doc)
    assert "<script src" not in text and "http://" not in text.split("<script>")[0]
    assert text.count("<script>") == 2, "plotly.js and the figures, both inline"
    assert "alert(1)</script>" not in text, "trial text is escaped"
    assert "accuracy = 0.95" in text and "Trials" in text


def test_reader_rebuilds_a_job_document_only_after_a_new_event(store) -> None:  # noqa: ANN001
    """Pages that refetch share one build per change of the job (real Redis)."""
    from tunecluster.dashboard.data import Reader

    spec = {"name": "t", "search": {"objective": "val_accuracy", "max_trials": 2}}
    job = store.jobs.submit("t", json.dumps(spec), {"space": []}, 0, "native")
    reader = Reader(store)
    first = reader.job(job)
    assert reader.job(job) is first and reader.builds == 1
    store.jobs.set_state(job, "running")  # writes a job_state event
    again = reader.job(job)
    assert reader.builds == 2 and again["state"] == "running"
    assert again["summary"]["total"] == 2 and again["figures"]["curves"]["data"] == []


def test_every_figure_escapes_the_jobs_strings() -> None:
    """plotly.js renders links and styles from text: names and values reach it escaped."""
    name, value, metric = '<a href="http://x/">n</a>', "<b>v</b>", "<i>m</i>"
    rows = [trial(f"{i:02d}", "COMPLETED", 0.1 * i, **{name: value if i % 2 else "p",
                                                       "lr": 10.0 ** -i})
            for i in range(1, 7)]
    doc = {**results(rows, best="06"), "objective": {"name": metric, "direction": "max"}}
    space = plots.space_info({"space": [{"class_name": "Choice", "config": {
        "name": name, "values": [value, "p"]}}]})
    histories = {t["trial"]: {1: {metric: t["score"], "<s>loss</s>": 1.0}} for t in rows}
    figures = [*plots.job_figures(doc, histories, space, {"importances": {name: 1.0},
                                                          "n_trials": 6}).values(),
               plots.trial_metrics("01", histories["01"]), plots.compare_histories([doc]),
               plots.empty(metric, value)]
    for fig in figures:
        text = json.dumps(fig)
        for markup in ("<a ", "<b>", "<i>", "<s>"):
            assert markup not in text, (markup, text[:300])
    slices = json.dumps(plots.slice_plots(doc, space))
    assert "&lt;b&gt;v&lt;/b&gt;" in slices and "&lt;a href=" in slices
