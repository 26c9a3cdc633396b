"""KerasTuner's oracles without Keras: the chief starts in a fraction of a second.

KerasTuner imports Keras at its top (``keras_tuner.src.backend``), and Keras imports its
backend, TensorFlow here: seconds of start-up and hundreds of MB that the chief never
uses. (Keras 3's ``numpy`` backend is no way out: in Keras 3.15 it imports JAX for its
FFT, and JAX is not installed.) What KerasTuner's hyperparameters and oracles really
call of Keras is small and pure Python: ``keras.version()``, ``keras.config.backend()``
(to pick plain files over ``tf.io.gfile``) and ``keras.utils.legacy``'s
``serialize_keras_object`` / ``deserialize_keras_object`` (a ``HyperParameters``'s
config to and from its classes). ``import_keras_tuner`` stands those in, faithfully
for the objects KerasTuner hands them, and imports the real ``keras_tuner``: the
oracles that run are KerasTuner's own classes, unchanged.

Everything else of Keras (layers, callbacks, models...) becomes a placeholder that
KerasTuner's modules may name (a base class of its ``Tuner`` callbacks, say) but that
fails with a clear error if anything calls it. Only processes that never build or load
a model use this (the chief; it evaluates the best model in a child process). A
process where Keras is already imported gets the real thing; so does one with
``TUNECLUSTER_REAL_KERAS=1``. ``tests/unit/test_startup_oracles.py`` runs each oracle
side by side with and without it and compares every suggestion and state.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import inspect
import os
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

REAL_KERAS_ENV = "TUNECLUSTER_REAL_KERAS"
BACKEND = "none (tunecluster chief: no Keras)"
# What KerasTuner's ``from keras import *`` copies: the names its modules use.
_PUBLIC = ("Model", "Sequential", "applications", "backend", "callbacks", "config",
           "layers", "losses", "metrics", "models", "ops", "optimizers", "random",
           "saving", "src", "utils", "version")


def import_keras_tuner() -> types.ModuleType:
    """``keras_tuner``, with Keras stood in for unless it is (or must be) the real one.

    scikit-learn and pandas, which KerasTuner imports with it (most of its import time)
    for its Bayesian tuner's Gaussian process and its scikit-learn tuner, are imported
    on first use instead."""
    if "keras_tuner" not in sys.modules and "keras" not in sys.modules \
            and os.environ.get(REAL_KERAS_ENV, "") in ("", "0"):
        sys.meta_path.insert(0, _StandIn())
        if not any(root in sys.modules for root in _DeferSklearn.ROOTS):
            sys.meta_path.insert(0, _DEFER_SKLEARN)
    import keras_tuner

    return keras_tuner


def keras_is_stood_in() -> bool:
    """Whether this process runs KerasTuner on the stand-in (no Keras, no TensorFlow)."""
    return isinstance(sys.modules.get("keras"), _KerasModule)


# --- what KerasTuner calls -------------------------------------------------------------


def serialize_keras_object(instance: Any) -> Any:
    """Keras's legacy serializer, for what KerasTuner gives it: objects with
    ``get_config`` whose items are plain values (JSON scalars, lists, None)."""
    instance = inspect.unwrap(instance)
    if instance is None:
        return None
    if hasattr(instance, "get_config"):
        return {"class_name": type(instance).__name__, "config": instance.get_config()}
    if hasattr(instance, "__name__"):
        return instance.__name__
    raise ValueError(f"Cannot serialize {instance} because it doesn't implement"
                     " `get_config()`.")


@functools.lru_cache(maxsize=256)
def _takes_custom_objects(cls: type) -> bool:
    """Whether ``cls.from_config`` takes ``custom_objects`` (asked for every trial's
    hyperparameters: inspecting a signature costs more than the rest of the call)."""
    return "custom_objects" in inspect.getfullargspec(cls.from_config).args


def deserialize_keras_object(identifier: Any, module_objects: Mapping[str, Any] | None = None,
                             custom_objects: Mapping[str, Any] | None = None,
                             printable_module_name: str = "object") -> Any:
    """Keras's legacy deserializer, for KerasTuner's configs: ``{"class_name", "config"}``
    looked up in the given mappings (KerasTuner passes its own classes)."""
    lookup = {**(module_objects or {}), **(custom_objects or {})}
    if identifier is None:
        return None
    if isinstance(identifier, dict):
        if "class_name" not in identifier or "config" not in identifier:
            raise ValueError(f"Improper config format for {identifier}. Expecting python"
                             " dict contains `class_name` and `config` as keys")
        cls = lookup.get(identifier["class_name"])
        if cls is None:
            raise ValueError(f"Unknown {printable_module_name}:"
                             f" '{identifier['class_name']}'.")
        config = identifier["config"]
        if isinstance(config, dict):
            for key, item in list(config.items()):
                if isinstance(item, dict) and "__passive_serialization__" in item:
                    config[key] = deserialize_keras_object(item, module_objects,
                                                           custom_objects, "config_item")
        if not hasattr(cls, "from_config"):
            return cls(**config)
        if _takes_custom_objects(cls):
            return cls.from_config(config, custom_objects=dict(custom_objects or {}))
        return cls.from_config(config)
    if isinstance(identifier, str):
        obj = lookup.get(identifier)
        if obj is None:
            raise ValueError(f"Unknown {printable_module_name}: '{identifier}'.")
        return obj() if inspect.isclass(obj) else obj
    if inspect.isfunction(identifier):
        return identifier
    raise ValueError(f"Could not interpret serialized {printable_module_name}: {identifier}")


# --- the stand-in modules ---------------------------------------------------------------


class _Missing(type):
    """A placeholder for a Keras name: it can be named, subclassed and looked into, but
    calling it (or a subclass) says Keras is not loaded here."""

    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _missing(f"{cls.__qualname__}.{attr}")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{cls.__qualname__} needs Keras, which this process (the"
                           f" tunecluster chief) does not load; set {REAL_KERAS_ENV}=1 to"
                           " load it")


def _missing(path: str) -> type:
    return _Missing(path.rsplit(".", 1)[-1], (), {"__qualname__": path,
                                                  "__module__": "keras"})


class _KerasModule(types.ModuleType):
    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _missing(f"{self.__name__}.{attr}")


def _module(name: str, **attrs: Any) -> _KerasModule:
    module = _KerasModule(name)
    module.__path__ = []  # a package: ``import keras.x.y`` comes back here
    module.__dict__.update(attrs)
    return module


def _build(name: str) -> _KerasModule:
    if name != "keras":
        return _module(name, __all__=[])
    # The few real pieces, in place as attributes and as modules.
    legacy = _module("keras.utils.legacy", serialize_keras_object=serialize_keras_object,
                     deserialize_keras_object=deserialize_keras_object)
    utils = _module("keras.utils", __all__=[], legacy=legacy,
                    register_keras_serializable=_register)
    saving = _module("keras.saving", __all__=[], register_keras_serializable=_register)
    config = _module("keras.config", __all__=[], backend=lambda: BACKEND)
    metrics = _module("keras.metrics", __all__=[], deserialize=_metric)
    losses = _module("keras.losses", __all__=[], deserialize=_loss)
    for module in (legacy, utils, saving, config, metrics, losses):
        sys.modules[module.__name__] = module
    return _module(name, __all__=list(_PUBLIC), version=lambda: "3.0.0",
                   __version__="3.0.0", utils=utils, saving=saving, config=config,
                   metrics=metrics, losses=losses)


# The metric names for which Keras 3.15 makes KerasTuner's ``infer_metric_direction``
# answer "max" (after it strips ``val_`` and ``weighted_``): every other name Keras
# knows gives "min", as does a name it does not know. (For some names, IoU and the
# like, real Keras raises instead, which would stop the chief; "min" here.)
# tests/unit/test_startup_oracles.py checks this list against Keras's registries.
MAX_METRICS = frozenset({
    "AUC", "Accuracy", "BinaryAccuracy", "CategoricalAccuracy", "Precision", "Recall",
    "SparseCategoricalAccuracy", "SparseTopKCategoricalAccuracy",
    "TopKCategoricalAccuracy", "TrueNegatives", "TruePositives", "accuracy", "auc",
    "binary_accuracy", "categorical_accuracy", "precision", "recall",
    "sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy",
    "top_k_categorical_accuracy", "true_negatives", "true_positives",
})


def _metric(name: Any, use_legacy_format: bool = False) -> Any:
    """``keras.metrics.deserialize`` as ``infer_metric_direction`` uses it: a name that
    Keras maps to a maximized metric comes back as one; others are unknown."""
    if isinstance(name, str) and name in MAX_METRICS:
        return "accuracy"  # one of KerasTuner's maximized metric function names
    raise ValueError(f"Unknown metric function: '{name}'")


def _loss(name: Any, use_legacy_format: bool = False) -> Any:
    raise ValueError(f"Unknown loss function: '{name}'")


def _register(*_args: Any, **_kwargs: Any) -> Any:
    """``register_keras_serializable``: KerasTuner registers its image-augmentation
    layers with Keras; with no Keras there is nothing to register them with."""
    return lambda obj: obj


class _StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import keras`` and ``import keras.<anything>`` with stand-in modules."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "keras" and not fullname.startswith("keras."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _build(spec.name)
        parent, _, child = spec.name.rpartition(".")
        if parent and parent in sys.modules:  # keras.utils.legacy reachable as attributes
            setattr(sys.modules[parent], child, module)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


# --- scikit-learn and pandas on first use --------------------------------------------------


class _Deferred(types.ModuleType):
    """A module that imports its real self on first use and hands over to it."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(_DEFER_SKLEARN.load(self.__name__), attr)


class _DeferSklearn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers the imports of the modules KerasTuner's modules name with ``_Deferred``
    ones; any use of one of them, or any other import of these packages, puts the real
    ones in place (and this finder away)."""

    ROOTS = ("sklearn", "pandas")
    NAMES = ("sklearn", "sklearn.exceptions", "sklearn.gaussian_process",
             "sklearn.model_selection", "sklearn.pipeline", "pandas")

    def __init__(self) -> None:
        import threading

        self.lock = threading.RLock()
        # Only what is installed is deferred: KerasTuner imports pandas inside a
        # try/except ImportError, and an image without pandas must get that error now,
        # not a module that fails on first use.
        self.names = tuple(n for n in self.NAMES if _installed(n.split(".")[0]))

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        if fullname.split(".")[0] in self.ROOTS:
            self.load(fullname.split(".")[0])  # another part: the real packages first
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _Deferred(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass

    def load(self, name: str) -> types.ModuleType:
        """The real module ``name`` (every deferred one is replaced on the first call)."""
        import importlib

        with self.lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
                for deferred in self.names:
                    if isinstance(sys.modules.get(deferred), _Deferred):
                        del sys.modules[deferred]
                for real in self.names:
                    importlib.import_module(real)
            return importlib.import_module(name)


def _installed(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_DEFER_SKLEARN = _DeferSklearn()
