"""A trial's model on disk, and back: whole where Keras can serialize it, else its weights.

KerasTuner itself never deserializes a model: it rebuilds it from the hypermodel with the
trial's hyperparameters and loads the trial's weights. Models Keras cannot bring back
from their config (a ``Lambda`` layer, which Keras refuses to deserialize; a
``keras.Model`` subclass defined inside ``build_model``, which it cannot even serialize)
come back that way here too:

- ``save_model`` writes a ``.keras`` file; for a model Keras cannot serialize, a
  ``.keras`` archive of its weights only (the same ``model.weights.h5`` entry Keras
  writes, and the model's build config), which ``model.load_weights`` reads.
- ``load_model`` rebuilds with ``build`` when it is given (KerasTuner's way), building
  the model's variables from the saved build config, and loads the weights; without
  ``build`` it deserializes, and a weights-only file is refused in one line saying
  how to load it.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tunecluster.models.custom import ModelCodeError, build_checked

WEIGHTS_ENTRY = "model.weights.h5"  # Keras's own name inside a .keras archive
MARK = "tunecluster.json"  # present only in a weights-only archive


def save_model(model: Any, path: str | os.PathLike[str],
               example: Any = None) -> bool:
    """Write ``model`` to ``path`` (a ``.keras`` name); True when whole, False when Keras
    cannot serialize it and the archive holds its weights only, with the shape and dtype
    of one input ``example`` (a model subclass builds its variables on its first call)."""
    try:
        model.save(path)
        return True
    except (NotImplementedError, TypeError, ValueError):
        pass
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp, WEIGHTS_ENTRY)
        model.save_weights(weights)
        build_config = model.get_build_config() if model.built else None
        with zipfile.ZipFile(path, "w") as archive:
            archive.write(weights, WEIGHTS_ENTRY)
            archive.writestr(MARK, json.dumps({
                "weights_only": True, "class": type(model).__name__,
                "build_config": build_config,
                "input": None if example is None else {
                    "shape": [int(n) for n in example.shape[1:]],
                    "dtype": str(example.dtype)}}))
    return False


def weights_only(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The weights-only mark of an archive ``save_model`` wrote, or None (a whole model)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if MARK not in archive.namelist():
                return None
            mark = json.loads(archive.read(MARK))
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return mark if isinstance(mark, dict) else None


def load_model(path: str | os.PathLike[str], *, build: Callable[..., Any] | None = None,
               values: Mapping[str, Any] | None = None, compile: bool = True,
               custom_objects: Mapping[str, Any] | None = None, data: Any = None) -> Any:
    """The trained model at ``path``: rebuilt with ``build(hp)`` (``values``: the trial's
    hyperparameters) and its weights loaded when ``build`` is given, else deserialized."""
    import keras

    if build is None:
        mark = weights_only(path)
        if mark is not None:
            raise ModelCodeError(
                f"{path} holds the weights of a {mark.get('class', 'model')} Keras cannot"
                " deserialize: build the model with your build_model and the trial's"
                " hyperparameters, then model.load_weights(path)")
        return keras.models.load_model(path, compile=compile,
                                       custom_objects=dict(custom_objects or {}))
    return rebuild(path, build, values or {}, data)


def rebuild(path: str | os.PathLike[str], build: Callable[..., Any],
            values: Mapping[str, Any], data: Any = None) -> Any:
    """KerasTuner's way: ``build(hp)`` with the trial's values, then its weights."""
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    hp.values.update(values)  # what build declares takes these, not its defaults
    model = build_checked(build, hp, getattr(build, "__name__", "build_model"), data,
                          compiled=False)  # as the build gives it (KerasTuner's way)
    mark = weights_only(path) or {}
    if not model.built:
        config = mark.get("build_config") or _build_config(path)
        if config:
            model.build_from_config(config)
    example = mark.get("input")
    if isinstance(example, dict) and not _variables_built(model):
        import numpy as np

        model(np.zeros((1, *example["shape"]), dtype=example["dtype"]))  # builds a subclass
    with warnings.catch_warnings():
        # the rebuilt model's optimizer has no slots yet: its state is not needed to use
        # the model (KerasTuner's loaded models start without it too)
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)
    return model


def _variables_built(model: Any) -> bool:
    return bool(model.built and model.weights)


def _build_config(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The build config a whole ``.keras`` file keeps with its model's config."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError):
        return None
    found = config.get("build_config") if isinstance(config, dict) else None
    return found if isinstance(found, dict) else None
