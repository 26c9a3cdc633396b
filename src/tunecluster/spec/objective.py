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
