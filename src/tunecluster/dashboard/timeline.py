"""The job's charts over wall time: where each trial ran and when (idle gaps visible),
and the best score so far against the time since the job was submitted.

Pure functions of the results document (``store.results.build_results``: each trial's
``times`` are Redis times in ms; the job's ``created`` too), as ``plots.py``: plotly
figure dicts, every job-given string through ``plots.text``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunecluster.dashboard.plots import (
    BEST_COLOR,
    Figure,
    _layout,
    _number,
    _objective,
    empty,
    text,
)
from tunecluster.states import TrialState

STATE_COLORS = {TrialState.COMPLETED: "#1f77b4", TrialState.FAILED: "#7f7f7f",
                TrialState.CANCELLED: "#bcbd22", TrialState.STOPPED: "#9467bd",
                TrialState.RUNNING: "#2ca02c"}


def _seconds(ms: Any, start: float) -> float | None:
    value = _number(ms)
    return None if value is None else (value - start) / 1000.0


def timeline(results: Mapping[str, Any], now_ms: float | None = None) -> Figure:
    """One bar per trial (its last attempt) on its worker's row, from its claim to its
    end (to ``now_ms`` while it runs), coloured by state: the slots' idle gaps show."""
    title = "Timeline: trials per worker"
    start = _number(results.get("created"))
    if start is None:
        return empty(title, "the job has no creation time")
    bars: dict[str, dict[str, list[Any]]] = {}
    for trial in results.get("trials", []):
        times = trial.get("times") or {}
        begin = _seconds(times.get("claimed"), start)
        state = trial.get("state")
        end = _seconds(times.get("ended"), start)
        if end is None and state == TrialState.RUNNING and now_ms is not None:
            end = (now_ms - start) / 1000.0
        if begin is None or end is None or end < begin:
            continue
        series = bars.setdefault(str(state), {"x": [], "base": [], "y": [], "text": []})
        series["x"].append(round(end - begin, 3))
        series["base"].append(round(begin, 3))
        series["y"].append(text(trial.get("worker") or "?"))
        series["text"].append(text(trial.get("trial")))
    if not bars:
        return empty(title, "no trial has run yet")
    data = [{"type": "bar", "orientation": "h", "name": text(state), "x": s["x"],
             "base": s["base"], "y": s["y"], "text": s["text"], "textposition": "inside",
             "marker": {"color": STATE_COLORS.get(state, "#8c564b")},
             "hovertemplate": "trial %{text}<br>%{base:.1f} s to %{x:.1f} s later"
                              "<extra>" + text(state) + "</extra>"}
            for state, s in sorted(bars.items())]
    return {"data": data, "layout": _layout(
        title, showlegend=True, barmode="overlay", legend={"orientation": "h", "y": -0.2},
        xaxis={"title": {"text": "seconds since the job was submitted"}},
        yaxis={"title": {"text": "worker"}, "type": "category"})}


def best_over_time(results: Mapping[str, Any]) -> Figure:
    """The best score so far at each completed trial's end, against the seconds since
    the job was submitted: how long the search took to reach a score."""
    name, direction = _objective(results)
    title = f"Best {name} against wall time"
    start = _number(results.get("created"))
    points = []
    for trial in results.get("trials", []):
        score = _number(trial.get("score"))
        end = _seconds((trial.get("times") or {}).get("ended"), start or 0.0)
        if trial.get("state") == TrialState.COMPLETED and score is not None and end is not None:
            points.append((end, score, text(trial.get("trial"))))
    if start is None or not points:
        return empty(title, "no completed trial yet")
    points.sort()
    xs, best, labels = [], [], []
    for end, score, label in points:
        if best and not (score > best[-1] if direction == "max" else score < best[-1]):
            continue  # the line steps only where the best improves
        xs.append(round(end, 3))
        best.append(score)
        labels.append(label)
    return {"data": [
        {"type": "scatter", "mode": "lines+markers", "name": "best so far", "x": xs,
         "y": best, "text": labels, "line": {"shape": "hv", "color": BEST_COLOR, "width": 2},
         "hovertemplate": "trial %{text} at %{x:.1f} s<br>" + text(name)
                          + " %{y:.4g}<extra></extra>"}], "layout": _layout(
        title, xaxis={"title": {"text": "seconds since the job was submitted"}},
        yaxis={"title": {"text": text(name)}})}
