"""Hyperparameter importance: permutation importance on a random forest.

Method (named on the page and in docs/dashboard.md): a scikit-learn
``RandomForestRegressor`` (50 trees, fixed seed) is fitted to the completed trials,
hyperparameters in, score out; then each hyperparameter's column is shuffled in turn
(``sklearn.inspection.permutation_importance``, 5 repeats) and the mean drop of the
forest's R^2 is that hyperparameter's importance. Negative drops (noise) count as 0, and
the importances are scaled to sum to 1, so the bars read as shares.

Encoding: numbers as they are, log-sampled ones as their log10 (what the sampler saw),
choices and booleans as the index of their value (a forest splits on any order). A
hyperparameter with a single value over the trials has importance 0.

Computed only once ``MIN_TRIALS`` (5) trials are completed: fewer say nothing a person
could not read off the table. Deterministic for a given set of trials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tunecluster.dashboard.plots import (
    _categories,
    _completed,
    _number,
    hyperparameter_names,
    is_categorical,
)

MIN_TRIALS = 5
# Small on purpose: a few dozen trials need no more, and the dashboard shares the CPU
# with training when it runs beside an embedded cluster (bench/dashboard_overhead.py).
TREES = 50
REPEATS = 5
METHOD = (f"permutation importance (mean drop of R^2 over {REPEATS} shuffles) on a"
          f" scikit-learn random forest of {TREES} trees fitted to the completed trials")


def feature_matrix(results: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]
                   ) -> tuple[list[str], list[list[float]], list[float]]:
    """(names, rows, scores) of the completed trials, encoded as the module says."""
    trials = _completed(results)
    names = hyperparameter_names(results, space)
    columns: list[list[float]] = []
    for hp in names:
        info = space.get(hp, {})
        raw = [t.get("hyperparameters", {}).get(hp) for t in trials]
        if is_categorical(trials, hp, info):
            cats = _categories(trials, hp, info)
            columns.append([float(cats.index(v)) if v in cats else -1.0 for v in raw])
            continue
        nums = [_number(v) for v in raw]
        log = info.get("log") and all(v is None or v > 0 for v in nums)
        columns.append([(math.log10(v) if log else v) if v is not None else 0.0
                        for v in nums])
    rows = [list(r) for r in zip(*columns, strict=True)] if columns else [[] for _ in trials]
    scores = [float(t["score"]) for t in trials]
    return names, rows, scores


def hyperparameter_importance(results: Mapping[str, Any],
                              space: Mapping[str, Mapping[str, Any]], *,
                              min_trials: int = MIN_TRIALS, seed: int = 0) -> dict[str, Any]:
    """``{"method", "method_short", "n_trials", "importances": {name: share}}``, or
    ``{"reason": ..., "importances": {}}`` while fewer than ``min_trials`` completed."""
    names, rows, scores = feature_matrix(results, space)
    base = {"method": METHOD, "method_short": "permutation importance, random forest",
            "n_trials": len(scores)}
    if len(scores) < min_trials:
        return {**base, "importances": {},
                "reason": f"importance needs {min_trials} completed trials"
                          f" ({len(scores)} so far)"}
    if not names:
        return {**base, "importances": {}, "reason": "no hyperparameters"}
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    x = np.asarray(rows, dtype=float)
    y = np.asarray(scores, dtype=float)
    if float(np.ptp(y)) == 0.0:
        return {**base, "importances": {n: 0.0 for n in names},
                "reason": "every completed trial has the same score"}
    forest = RandomForestRegressor(n_estimators=TREES, random_state=seed, n_jobs=1)
    forest.fit(x, y)
    found = permutation_importance(forest, x, y, n_repeats=REPEATS, random_state=seed,
                                   n_jobs=1)
    drops = np.clip(found.importances_mean, 0.0, None)
    total = float(drops.sum())
    shares = drops / total if total > 0 else drops
    return {**base, "importances": {n: round(float(s), 6) for n, s in
                                    zip(names, shares, strict=True)}}
