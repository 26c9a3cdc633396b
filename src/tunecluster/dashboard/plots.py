"""The dashboard's and the report's charts, as plotly figure JSON built on the server.

Pure functions: in, a job's results document (``store.results.build_results``), the
per-trial epoch histories (``{trial: {epoch: {metric: value}}}``) and the search space
(``space_info``); out, plain dicts ``{"data": [...], "layout": {...}}`` that plotly.js
draws as they are (``Plotly.newPlot(div, fig.data, fig.layout)``). No plotly Python
import, no I/O: the same figures go to the live page and to the offline report.

Every string that comes from a job (hyperparameter names and values, metric and
objective names, job names, trial ids) goes through ``text`` before it reaches a figure:
plotly.js renders a subset of HTML in titles, labels, ticks, legends and hover text
(links, styles), and a custom model may name its hyperparameters and metrics anything.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

from tunecluster.states import TrialState

Figure = dict[str, Any]
Histories = Mapping[str, Mapping[int, Mapping[str, Any]]]

# Trial states that ended without a result of their own.
ENDED_EARLY = (TrialState.FAILED, TrialState.CANCELLED, TrialState.STOPPED)
BEST_COLOR = "#d62728"
FAILED_COLOR = "#7f7f7f"
LINE_COLOR = "rgba(31,119,180,0.55)"
BASE_LAYOUT: dict[str, Any] = {
    "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
    "height": 360,
    "template": None,
    "hovermode": "closest",
    "showlegend": False,
}


def text(value: Any) -> str:
    """``value`` as plotly shows it literally: ``<``, ``>`` and ``&`` as entities (plotly
    decodes those back for display; it parses no tag from them)."""
    return html.escape(str(value), quote=False)


def space_info(space: Mapping[str, Any] | None,
               spec: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Each hyperparameter's kind, whether its sampling is log, and its choices.

    ``space``: the job's KerasTuner space config (the job record's ``space``: it covers
    custom models too); ``spec``: the job spec, whose ``model.hyperparameters`` fills in
    what the config lacks. Returns ``{name: {"kind", "log", "values"}}`` in space order.
    """
    out: dict[str, dict[str, Any]] = {}
    for entry in (space or {}).get("space", []) or []:
        if not isinstance(entry, Mapping):
            continue
        config = entry.get("config") or {}
        name = config.get("name")
        if not isinstance(name, str):
            continue
        kind = str(entry.get("class_name", "")).lower()
        out[name] = {"kind": kind if kind in ("int", "float", "choice", "boolean", "fixed")
                     else kind or "unknown",
                     "log": config.get("sampling") == "log",
                     "values": list(config.get("values") or [])}
    declared = ((spec or {}).get("model") or {}).get("hyperparameters") or {}
    for name, hp in declared.items():
        if not isinstance(hp, Mapping):
            continue
        kind = next((k for k in ("int", "float", "choice", "boolean", "fixed") if k in hp),
                    "unknown")
        info = out.setdefault(name, {"kind": kind, "log": False, "values": []})
        info["log"] = info["log"] or hp.get("sampling") == "log"
        if kind == "choice" and not info["values"]:
            info["values"] = list(hp.get("choice") or [])
    return out


def hyperparameter_names(results: Mapping[str, Any],
                         space: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The names to plot: the space's order, then any a trial has that the space lacks."""
    names = list(space)
    for trial in results.get("trials", []):
        for name in trial.get("hyperparameters", {}):
            if name not in names:
                names.append(name)
    return names


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _objective(results: Mapping[str, Any]) -> tuple[str, str]:
    objective = results.get("objective") or {}
    return objective.get("name", "score"), objective.get("direction", "min")


def _best_trial(results: Mapping[str, Any]) -> str | None:
    best = results.get("best")
    return best.get("trial") if isinstance(best, Mapping) else None


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    """The layout titled ``title`` (escaped here: titles hold names, never markup)."""
    return {**BASE_LAYOUT, "title": {"text": text(title), "font": {"size": 14}}, **extra}


def empty(title: str, reason: str, height: int = 220) -> Figure:
    """A figure with no trace that says why (no empty axes)."""
    return {"data": [], "layout": _layout(
        title, height=height, xaxis={"visible": False}, yaxis={"visible": False},
        annotations=[{"text": text(reason), "showarrow": False, "xref": "paper", "yref": "paper",
                      "x": 0.5, "y": 0.5, "font": {"color": "#777"}}])}


def learning_curves(results: Mapping[str, Any], histories: Histories,
                    metric: str | None = None) -> Figure:
    """The objective (or ``metric``) per epoch of every trial: the best trial drawn
    thick in red, failed / cancelled / stopped trials dashed and grey with an ``x`` at
    their last epoch, running trials as they go. One trace per trial, named by its id
    (the live page appends new epochs to the trace of that name)."""
    name, _ = _objective(results)
    metric = metric or name
    best = _best_trial(results)
    data = []
    for trial in results.get("trials", []):
        tid = trial.get("trial")
        history = histories.get(tid, {}) if tid else {}
        points = [(int(e), _number(m.get(metric))) for e, m in sorted(history.items())
                  if isinstance(m, Mapping)]
        points = [(e, v) for e, v in points if v is not None]
        state = trial.get("state", "")
        ended = state in ENDED_EARLY
        is_best = tid == best
        trace: dict[str, Any] = {
            "type": "scatter", "mode": "lines+markers", "name": text(tid),
            "x": [e for e, _ in points], "y": [v for _, v in points],
            "line": {"width": 4 if is_best else 1.5,
                     "color": BEST_COLOR if is_best else FAILED_COLOR if ended else LINE_COLOR,
                     "dash": "dash" if ended else "solid"},
            "marker": {"size": 4},
            "hovertemplate": f"trial {text(tid)} ({text(state)})<br>epoch %{{x}}<br>"
                             f"{text(metric)} %{{y:.4g}}<extra></extra>",
            "meta": {"trial": tid, "state": state, "best": is_best},
        }
        if ended and points:
            size = [4] * (len(points) - 1) + [12]
            symbol = ["circle"] * (len(points) - 1) + ["x"]
            trace["marker"] = {"size": size, "symbol": symbol}
        data.append(trace)
    # draw the best trial on top of the others
    data.sort(key=lambda t: t["meta"]["best"])
    if not data:
        return empty(f"Learning curves: {metric} per epoch", "no trial yet")
    return {"data": data, "layout": _layout(
        f"Learning curves: {metric} per epoch",
        xaxis={"title": {"text": "epoch"}, "dtick": 1},
        yaxis={"title": {"text": text(metric)}})}


def optimization_history(results: Mapping[str, Any]) -> Figure:
    """Each completed trial's score in the order trials were created, and the best score
    so far (a step line): is the search still improving?"""
    name, direction = _objective(results)
    xs, ys, labels = [], [], []
    for index, trial in enumerate(results.get("trials", []), start=1):
        score = _number(trial.get("score"))
        if trial.get("state") == TrialState.COMPLETED and score is not None:
            xs.append(index)
            ys.append(score)
            labels.append(text(trial.get("trial")))
    if not xs:
        return empty(f"Optimization history ({name}, {direction})", "no completed trial yet")
    running: list[float] = []
    for y in ys:
        if not running:
            running.append(y)
        else:
            running.append(max(running[-1], y) if direction == "max" else min(running[-1], y))
    data = [
        {"type": "scatter", "mode": "markers", "name": "score", "x": xs, "y": ys,
         "text": labels, "marker": {"size": 8, "color": "#1f77b4"},
         "hovertemplate": "trial %{text}<br>" + text(name) + " %{y:.4g}<extra></extra>"},
        {"type": "scatter", "mode": "lines", "name": "best so far", "x": xs, "y": running,
         "line": {"shape": "hv", "color": BEST_COLOR, "width": 2},
         "hovertemplate": "best so far %{y:.4g}<extra></extra>"},
    ]
    return {"data": data, "layout": _layout(
        f"Optimization history ({name}, {direction})", showlegend=True,
        legend={"orientation": "h", "y": -0.2},
        xaxis={"title": {"text": "trial (in order of creation)"}},
        yaxis={"title": {"text": text(name)}})}


def _completed(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in results.get("trials", [])
            if t.get("state") == TrialState.COMPLETED and _number(t.get("score")) is not None]


def _categories(trials: list[Mapping[str, Any]], name: str,
                info: Mapping[str, Any]) -> list[Any]:
    values = list(info.get("values") or [])
    for t in trials:
        v = t.get("hyperparameters", {}).get(name)
        if v is not None and v not in values:
            values.append(v)
    return values


def is_categorical(trials: list[Mapping[str, Any]], name: str,
                   info: Mapping[str, Any]) -> bool:
    """Choices, booleans and anything whose values are not all numbers."""
    if info.get("kind") in ("choice", "boolean"):
        return True
    return any(_number(t.get("hyperparameters", {}).get(name)) is None
               for t in trials if t.get("hyperparameters", {}).get(name) is not None)


def parallel_coordinates(results: Mapping[str, Any],
                         space: Mapping[str, Mapping[str, Any]]) -> Figure:
    """One axis per hyperparameter and one for the score, a line per completed trial,
    coloured by score. Log-sampled values are placed by their log10 (ticks show the
    values); choices get one tick per value."""
    name, direction = _objective(results)
    trials = _completed(results)
    if not trials:
        return empty("Parallel coordinates (completed trials)", "no completed trial yet")
    dims = []
    for hp in hyperparameter_names(results, space):
        info = space.get(hp, {})
        raw = [t.get("hyperparameters", {}).get(hp) for t in trials]
        if is_categorical(trials, hp, info):
            cats = _categories(trials, hp, info)
            dims.append({"label": text(hp), "values": [cats.index(v) if v in cats else None
                                                        for v in raw],
                         "tickvals": list(range(len(cats))),
                         "ticktext": [text(c) for c in cats]})
            continue
        nums = [_number(v) for v in raw]
        if info.get("log") and all(v is None or v > 0 for v in nums):
            logs = [math.log10(v) if v else None for v in nums]
            present = [v for v in logs if v is not None]
            ticks = _log_ticks(min(present), max(present)) if present else []
            dims.append({"label": text(f"{hp} (log)"), "values": logs,
                         "tickvals": [math.log10(t) for t in ticks],
                         "ticktext": [f"{t:g}" for t in ticks]})
        else:
            dims.append({"label": text(hp), "values": nums})
    scores = [_number(t.get("score")) for t in trials]
    dims.append({"label": text(name), "values": scores})
    data = [{"type": "parcoords", "dimensions": dims,
             "line": {"color": scores, "colorscale": "Viridis",
                      "reversescale": direction == "min", "showscale": True,
                      "colorbar": {"title": {"text": text(name)}}}}]
    layout = _layout("Parallel coordinates (completed trials)", height=400,
                     margin={"l": 70, "r": 70, "t": 110, "b": 30})
    layout["title"]["y"] = 0.97  # above the axis labels, which plotly puts at the top
    return {"data": data, "layout": layout}


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten (and 2, 5 times them when the range is short) within [lo, hi]."""
    ticks = []
    for exp in range(math.floor(lo), math.ceil(hi) + 1):
        for mult in (1, 2, 5) if hi - lo < 2 else (1,):
            value = mult * 10.0 ** exp
            if 10 ** lo * 0.999 <= value <= 10 ** hi * 1.001:
                ticks.append(value)
    return ticks or [10 ** lo]


def slice_plots(results: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]],
                columns: int = 3) -> Figure:
    """The score against each hyperparameter, one panel each (completed trials): a log
    x axis where the space samples on a log scale, a categorical one for choices."""
    name, _ = _objective(results)
    trials = _completed(results)
    names = hyperparameter_names(results, space)
    if not trials or not names:
        return empty(f"Slice plots: {name} against each hyperparameter",
                     "no completed trial yet" if names else "no hyperparameters")
    n = len(names)
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    gap_x, gap_y = 0.06, 0.16 / rows if rows > 1 else 0.0
    width = (1 - gap_x * (columns - 1)) / columns
    height = (1 - gap_y * (rows - 1)) / rows
    data, layout = [], _layout(f"Slice plots: {name} against each hyperparameter",
                               height=max(300, 260 * rows), annotations=[])
    for i, hp in enumerate(names):
        row, col = divmod(i, columns)
        suffix = "" if i == 0 else str(i + 1)
        x0 = col * (width + gap_x)
        y1 = 1 - row * (height + gap_y)
        info = space.get(hp, {})
        xs = [t.get("hyperparameters", {}).get(hp) for t in trials]
        axis: dict[str, Any] = {"domain": [x0, x0 + width], "anchor": f"y{suffix}",
                                "title": {"text": text(hp), "standoff": 2}}
        if is_categorical(trials, hp, info):
            axis["type"] = "category"
            axis["categoryorder"] = "array"
            axis["categoryarray"] = [text(c) for c in _categories(trials, hp, info)]
            xs = [text(v) for v in xs]
        elif info.get("log"):
            axis["type"] = "log"
        layout[f"xaxis{suffix}"] = axis
        layout[f"yaxis{suffix}"] = {"domain": [max(0.0, y1 - height), y1],
                                    "anchor": f"x{suffix}",
                                    "title": {"text": text(name) if col == 0 else ""}}
        data.append({"type": "scatter", "mode": "markers", "name": text(hp), "x": xs,
                     "y": [_number(t.get("score")) for t in trials],
                     "text": [text(t.get("trial")) for t in trials],
                     "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
                     "marker": {"size": 7, "color": "#1f77b4", "opacity": 0.8},
                     "hovertemplate": "trial %{text}<br>" + text(hp) + " %{x}<br>"
                                      + text(name) + " %{y:.4g}<extra></extra>"})
    return {"data": data, "layout": layout}


def importance_bars(importance: Mapping[str, Any] | None) -> Figure:
    """Horizontal bars of ``importance.hyperparameter_importance``'s result (most
    important on top); an empty figure with the reason while too few trials are done."""
    if not importance or not importance.get("importances"):
        return empty("Hyperparameter importance",
                     (importance or {}).get("reason", "not computed"), height=200)
    items = sorted(importance["importances"].items(), key=lambda kv: kv[1])
    data = [{"type": "bar", "orientation": "h", "x": [v for _, v in items],
             "y": [text(k) for k, _ in items], "marker": {"color": "#1f77b4"},
             "hovertemplate": "%{y}: %{x:.3f}<extra></extra>"}]
    return {"data": data, "layout": _layout(
        f"Hyperparameter importance ({importance.get('method_short', 'permutation')},"
        f" {importance.get('n_trials')} trials)", height=max(200, 60 + 40 * len(items)),
        xaxis={"title": {"text": "share of importance"}, "rangemode": "tozero"},
        margin={"l": 140, "r": 20, "t": 40, "b": 50})}


def trial_metrics(trial: str, history: Mapping[int, Mapping[str, Any]]) -> Figure:
    """Every metric of one trial per epoch (losses and the rest on two y axes)."""
    names: list[str] = []
    for metrics in history.values():
        for key in metrics:
            if key not in names:
                names.append(key)
    data = []
    epochs = sorted(int(e) for e in history)
    for key in names:
        lossy = "loss" in key or key.endswith(("mae", "mse", "rmse"))
        data.append({"type": "scatter", "mode": "lines+markers", "name": text(key),
                     "x": epochs,
                     "y": [_number(history[e].get(key)) for e in epochs],
                     "yaxis": "y" if lossy else "y2"})
    return {"data": data, "layout": _layout(
        f"Trial {trial}: metrics per epoch", showlegend=True,
        legend={"orientation": "h", "y": -0.2},
        xaxis={"title": {"text": "epoch"}, "dtick": 1},
        yaxis={"title": {"text": "loss / error"}},
        yaxis2={"title": {"text": "other metrics"}, "overlaying": "y", "side": "right"})}


def compare_histories(jobs: list[Mapping[str, Any]]) -> Figure:
    """Several jobs' optimization histories overlaid: each job's best score so far by
    trial. Jobs whose objectives differ are still drawn (the legend names each)."""
    data = []
    for results in jobs:
        name, direction = _objective(results)
        series = optimization_history(results)["data"]
        # no completed trial yet: an empty line (its figure is a placeholder, no series)
        best = series[1] if len(series) > 1 else {"x": [], "y": []}
        data.append({"type": "scatter", "mode": "lines+markers",
                     "name": text(f"{results.get('name')} ({results.get('job')}): {name}"),
                     "x": best["x"], "y": best["y"], "line": {"shape": "hv"},
                     "meta": {"job": results.get("job"), "direction": direction}})
    return {"data": data, "layout": _layout(
        "Best score so far, by trial", showlegend=True,
        legend={"orientation": "h", "y": -0.25},
        xaxis={"title": {"text": "trial"}}, yaxis={"title": {"text": "score"}})}


def job_figures(results: Mapping[str, Any], histories: Histories,
                space: Mapping[str, Mapping[str, Any]],
                importance: Mapping[str, Any] | None) -> dict[str, Figure]:
    """Every chart of the job view (and the report), by name."""
    return {
        "curves": learning_curves(results, histories),
        "history": optimization_history(results),
        "parallel": parallel_coordinates(results, space),
        "slices": slice_plots(results, space),
        "importance": importance_bars(importance),
    }
