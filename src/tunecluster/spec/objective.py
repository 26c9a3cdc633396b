"""Objective names and their directions, as KerasTuner will see them."""

from __future__ import annotations

# Substrings that say "bigger is better" / "smaller is better". Loss-like hints are
# checked first: "crossentropy" or "error" decide even where an "acc" also appears.
_MAX_HINTS = ("accuracy", "acc", "auc", "precision", "recall", "f1", "r2", "iou")
_MIN_HINTS = ("loss", "mse", "mae", "rmse", "error", "crossentropy", "hinge", "mape", "msle")


def infer_direction(name: str) -> str | None:
    """``max`` / ``min`` for a metric name, or None when the name does not tell."""
    base = name.removeprefix("val_").lower()
    if any(hint in base for hint in _MIN_HINTS):
        return "min"
    if any(hint in base for hint in _MAX_HINTS):
        return "max"
    return None


def builtin_metrics(task: str) -> tuple[str, ...]:
    """Metric names the builtin MLP compiles for a task (besides ``loss``)."""
    return ("accuracy",) if task == "classification" else ("mae", "mse", "rmse")


MULTI_OBJECTIVE = "multi_objective"  # KerasTuner's name for a list of objectives
# KerasTuner's objective when none is given to a search whose own fit or run_trial
# scores the trials: the number it returns, minimized (its DefaultObjective)
DEFAULT_OBJECTIVE = "default_objective"


def with_objective(metrics: dict[str, float], objective: str,
                   parts: list[tuple[str, str]] | None) -> dict[str, float]:
    """``metrics`` with the value of a multi-objective added (KerasTuner's
    ``MultiObjective``: the sum of its parts, each negated where bigger is better, to
    minimize) when all its parts are there; unchanged otherwise."""
    if not parts or objective in metrics or not all(name in metrics for name, _ in parts):
        return metrics
    value = sum(metrics[name] if direction == "min" else -metrics[name]
                for name, direction in parts)
    return {**metrics, objective: float(value)}
