"""The objective must be a name the compiled model reports: checked at submit, on the
model ``build_model`` returned there, before anything is queued (a wrong name would
fail every trial).

Keras 3 logs ``loss`` and each compiled metric under its name: a string is kept as
given (``metrics=["RootMeanSquaredError"]`` logs ``RootMeanSquaredError``), a metric
object under its ``name``, a function under its snake_case name; ``val_`` + each on
validation data. A model whose names cannot be known before training (several
outputs, metrics per output, its own ``train_step``/``test_step``) is not checked.
Builtin jobs are checked by ``spec/rules.py`` against ``spec.objective.builtin_metrics``,
without TensorFlow.
"""

from __future__ import annotations

from typing import Any

from tunecluster.errors import SpecError

# Model methods that, overridden, can log names compile() does not know of.
_OWN_LOGS = ("train_step", "test_step", "compute_metrics", "compute_loss")


def reported_names(model: Any) -> list[str] | None:
    """The names ``fit`` logs on validation data (``val_loss``, ``val_<metric>``...), or
    None when they cannot be told from the compiled model."""
    import keras

    if any(getattr(type(model), m, None) is not getattr(keras.Model, m) for m in _OWN_LOGS):
        return None
    if len(getattr(model, "outputs", None) or [None]) > 1:
        return None
    compiled = getattr(model, "_compile_metrics", None)
    given: list[Any] = []
    for attr in ("_user_metrics", "_user_weighted_metrics"):
        value = getattr(compiled, attr, None) if compiled is not None else None
        if value is None:
            continue
        if not isinstance(value, (list, tuple)) or any(isinstance(v, (list, tuple, dict))
                                                       for v in value):
            return None  # per-output metrics: names carry the output's
        given.extend(value)
    names = ["loss"] + [_name(m) for m in given]
    return [f"val_{n}" for n in dict.fromkeys(names)]


def _name(metric: Any) -> str:
    """The name Keras 3 logs a compiled metric under (compile_utils.get_metric)."""
    from keras.src.utils.naming import get_object_name

    return metric if isinstance(metric, str) else str(get_object_name(metric))


def check_objective(model: Any, objective: str | list[str],
                    function: str = "build_model") -> None:
    """``SpecError`` (one line, the names that would work) when the compiled ``model``
    does not report ``objective`` (each of a multi-objective's parts)."""
    names = reported_names(model)
    if names is None:
        return
    for wanted in [objective] if isinstance(objective, str) else objective:
        if wanted not in names:
            raise SpecError("search.objective",
                            f"{wanted!r} is not reported by the model {function}(hp)"
                            f" compiles; it reports: {', '.join(names)}")
