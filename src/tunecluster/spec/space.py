"""Search space: spec hyperparameters -> a real ``keras_tuner.HyperParameters``.

``space_config`` writes the same space as KerasTuner's own JSON config without importing
KerasTuner (which imports Keras and TensorFlow, seconds at start-up): what the CLI and
the Python API submit for a builtin model. ``tests/unit/test_space.py`` checks that it
equals ``space_to_json(build_space(...))`` for every kind of hyperparameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunecluster.spec.models import HyperParameter


def build_space(hyperparameters: Mapping[str, HyperParameter]) -> Any:
    """Register every spec hyperparameter on a fresh ``keras_tuner.HyperParameters``."""
    from tunecluster.quiet import import_tensorflow

    import_tensorflow()
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    for name, spec in hyperparameters.items():
        register(hp, name, spec)
    return hp


def space_config(hyperparameters: Mapping[str, HyperParameter]) -> dict[str, Any]:
    """``space_to_json(build_space(hyperparameters))``, computed without KerasTuner.

    It follows what KerasTuner's classes store (``get_config`` of ``Int``, ``Float``,
    ``Choice``, ``Boolean``, ``Fixed`` and ``HyperParameters``), quirks included: an
    ``Int`` keeps its default as given (None: the minimum is its value), a ``Float``
    writes its minimum as default, a ``Choice`` of booleans becomes one of ints.
    """
    space: list[dict[str, Any]] = []
    values: dict[str, Any] = {}
    for name, spec in hyperparameters.items():
        class_name, config, value = _one_config(name, spec)
        space.append({"class_name": class_name, "config": config})
        values[name] = value
    return {"space": space, "values": values}


def _one_config(name: str, spec: HyperParameter) -> tuple[str, dict[str, Any], Any]:
    kind = spec.kind
    if kind == "int":
        lo, hi = (int(v) for v in spec.int_)  # type: ignore[union-attr]
        sampling = spec.sampling or "linear"
        step = int(spec.step) if spec.step is not None else (1 if sampling == "linear" else None)
        config = {"name": name, "default": spec.default, "conditions": [], "min_value": lo,
                  "max_value": hi, "step": step, "sampling": sampling}
        return "Int", config, lo if spec.default is None else spec.default
    if kind == "float":
        lo_f, hi_f = (float(v) for v in spec.float_)  # type: ignore[union-attr]
        default = lo_f if spec.default is None else spec.default
        config = {"name": name, "default": default, "conditions": [], "min_value": lo_f,
                  "max_value": hi_f, "step": spec.step, "sampling": spec.sampling or "linear"}
        return "Float", config, default
    if kind == "choice":
        choices = list(spec.choice or [])
        chosen = spec.default
        if isinstance(choices[0], str):
            choices = [str(v) for v in choices]
            chosen = None if chosen is None else str(chosen)
        elif isinstance(choices[0], int):  # bool is an int: KerasTuner makes them 1 and 0
            choices = [int(v) for v in choices]
            chosen = None if chosen is None else int(chosen)
        default = choices[0] if chosen is None else chosen
        config = {"name": name, "default": default, "conditions": [], "values": choices,
                  "ordered": not isinstance(choices[0], str)}
        return "Choice", config, default
    if kind == "boolean":
        flag = bool(spec.boolean if spec.default is None else spec.default)
        return "Boolean", {"name": name, "default": flag, "conditions": []}, flag
    return "Fixed", {"name": name, "conditions": [], "value": spec.fixed}, spec.fixed


def register(hp: Any, name: str, spec: HyperParameter) -> Any:
    """Declare one hyperparameter on ``hp`` and return its current value."""
    kind = spec.kind
    if kind == "int":
        lo, hi = spec.int_  # type: ignore[misc]
        return hp.Int(
            name,
            min_value=lo,
            max_value=hi,
            step=int(spec.step) if spec.step is not None else None,
            sampling=spec.sampling or "linear",
            default=spec.default,
        )
    if kind == "float":
        lo, hi = spec.float_  # type: ignore[misc]
        return hp.Float(
            name,
            min_value=lo,
            max_value=hi,
            step=spec.step,
            sampling=spec.sampling or "linear",
            default=spec.default,
        )
    if kind == "choice":
        return hp.Choice(name, list(spec.choice), default=spec.default)  # type: ignore[arg-type]
    if kind == "boolean":
        flag = spec.boolean if spec.default is None else spec.default
        return hp.Boolean(name, default=bool(flag))
    return hp.Fixed(name, spec.fixed)


def space_to_json(hp: Any) -> dict[str, Any]:
    """JSON-safe form of a HyperParameters space (KerasTuner's own config)."""
    return hp.get_config()


def space_from_json(config: Mapping[str, Any]) -> Any:
    from tunecluster.quiet import import_tensorflow

    import_tensorflow()
    import keras_tuner

    return keras_tuner.HyperParameters.from_config(dict(config))


def hyperparameters_with_values(config: Mapping[str, Any], values: Mapping[str, Any]) -> Any:
    """The space with one trial's values set: what ``build_model(hp)`` receives."""
    hp = space_from_json(config)
    hp.values.update(values)
    return hp
