"""The Pareto front of a search with a list objective: each completed trial placed by
the objective's first two parts, the front (``results["pareto"]``) highlighted and
joined. A pure function of the results document, as ``plots.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunecluster.dashboard.plots import BEST_COLOR, Figure, _layout, _number, empty, text
from tunecluster.states import TrialState


def pareto(results: Mapping[str, Any], parts: list[tuple[str, str]]) -> Figure:
    """``parts``: the objective's (name, direction)s; the first two are drawn."""
    (x_name, x_dir), (y_name, y_dir) = parts[0], parts[1]
    title = f"Pareto front: {x_name} ({x_dir}) and {y_name} ({y_dir})" + (
        f", first two of {len(parts)} parts" if len(parts) > 2 else "")
    front = set(results.get("pareto") or [])
    points: dict[bool, dict[str, list[Any]]] = {True: {"x": [], "y": [], "text": []},
                                                False: {"x": [], "y": [], "text": []}}
    for trial in results.get("trials", []):
        metrics = trial.get("metrics") or {}
        x, y = _number(metrics.get(x_name)), _number(metrics.get(y_name))
        if trial.get("state") != TrialState.COMPLETED or x is None or y is None:
            continue
        side = points[trial.get("trial") in front]
        side["x"].append(x)
        side["y"].append(y)
        side["text"].append(text(trial.get("trial")))
    if not points[True]["x"]:
        return empty(title, "no completed trial yet")
    on = sorted(zip(points[True]["x"], points[True]["y"], points[True]["text"], strict=True))
    hover = ("trial %{text}<br>" + text(x_name) + " %{x:.4g}<br>" + text(y_name)
             + " %{y:.4g}<extra></extra>")
    data = [
        {"type": "scatter", "mode": "markers", "name": "dominated", "x": points[False]["x"],
         "y": points[False]["y"], "text": points[False]["text"],
         "marker": {"size": 7, "color": "#9e9e9e"}, "hovertemplate": hover},
        {"type": "scatter", "mode": "lines+markers", "name": "Pareto front",
         "x": [p[0] for p in on], "y": [p[1] for p in on], "text": [p[2] for p in on],
         "line": {"shape": "linear", "color": BEST_COLOR, "width": 2},
         "marker": {"size": 9, "color": BEST_COLOR}, "hovertemplate": hover},
    ]
    return {"data": data, "layout": _layout(
        title, showlegend=True, legend={"orientation": "h", "y": -0.2},
        xaxis={"title": {"text": text(x_name)}}, yaxis={"title": {"text": text(y_name)}})}
