"""Users' own ``build_model(hp)``, loaded from the source text that travels with the job."""

from __future__ import annotations

import hashlib
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

from tunecluster.errors import TrialFailed


class ModelCodeError(TrialFailed):
    """The job's model code does not import, or does not return a compiled model."""


def load_build_function(source: str, function: str, filename: str = "model.py") -> Callable[[Any], Any]:
    """Execute ``source`` in a fresh module and return its ``function``."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    name = f"tunecluster_user_{digest}"
    module = types.ModuleType(name)
    module.__file__ = filename
    # Registered while it runs so that dataclasses, keras serialization and
    # relative lookups by module name work as in a normal import.
    sys.modules[name] = module
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except BaseException as exc:  # SyntaxError, ImportError, anything the module raises
        sys.modules.pop(name, None)
        raise ModelCodeError(f"{filename} failed to import: {_last_line(exc)}") from exc
    build = getattr(module, function, None)
    if not callable(build):
        raise ModelCodeError(f"{filename} defines no function {function!r}")
    return build


def build_checked(build: Callable[[Any], Any], hp: Any, function: str = "build_model") -> Any:
    """Call ``build(hp)`` and insist on a compiled ``keras.Model``."""
    import keras

    try:
        model = build(hp)
    except Exception as exc:
        raise ModelCodeError(f"{function}(hp) raised {_last_line(exc)}") from exc
    if not isinstance(model, keras.Model):
        raise ModelCodeError(
            f"{function}(hp) must return a compiled keras.Model, got {type(model).__name__}"
        )
    if not getattr(model, "compiled", False):
        raise ModelCodeError(f"{function}(hp) returned a model that is not compiled; call model.compile()")
    return model


def _last_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def discover_space(source: str, function: str, declared: Any, filename: str = "model.py") -> Any:
    """Run ``build_model`` once, as KerasTuner's tuner does, to register its search space.

    ``declared`` is a HyperParameters already holding the spec's own hyperparameters;
    the ones ``build_model`` declares are added to it. Doubles as the submit-time check
    that the module imports and returns a compiled model.
    """
    import keras

    build = load_build_function(source, function, filename)
    try:
        build_checked(build, declared, function)
    finally:
        keras.backend.clear_session()
    return declared
