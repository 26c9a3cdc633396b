"""Search space: spec hyperparameters -> a real ``keras_tuner.HyperParameters``."""

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
        return hp.Boolean(name, default=bool(spec.boolean if spec.default is None else spec.default))
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
