"""Users' own ``build_model(hp)``, loaded from the source text that travels with the job.

At submit, ``build_model`` runs once to discover its search space, in a process of its
own with a time limit (``discover_space_isolated``): users' code must not hang or crash
``submit`` and ``validate``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import types
from collections.abc import Callable, Mapping
from typing import Any

from tunecluster.errors import SpecError, TrialFailed


class ModelCodeError(TrialFailed):
    """The job's model code does not import, or does not return a compiled model."""


class NotAModel(ModelCodeError):
    """``build_model`` returned something other than a ``keras.Model``."""

    def __init__(self, call: str, returned: object) -> None:
        super().__init__(f"{call} must return a compiled keras.Model, got"
                         f" {type(returned).__name__}")
        self.call, self.returned_type = call, type(returned)


def _run_module(source: str, filename: str, prefix: str) -> types.ModuleType:
    """Execute ``source`` in a fresh module named ``<prefix>_<digest>``; ``ModelCodeError``
    (one line) when it does not import."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    name = f"{prefix}_{digest}"
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
    return module


def load_functions(source: str, names: list[str],
                   filename: str = "model.py") -> list[Callable[..., Any]]:
    """Execute ``source`` once in a fresh module and return its functions ``names``."""
    module = _run_module(source, filename, "tunecluster_user")
    found = []
    for name in names:
        function = getattr(module, name, None)
        if not callable(function):
            raise ModelCodeError(f"{filename} defines no function {name!r}")
        found.append(function)
    return found


def load_build_function(source: str, function: str,
                        filename: str = "model.py") -> Callable[[Any], Any]:
    """Execute ``source`` in a fresh module and return its ``function``."""
    return load_functions(source, [function], filename)[0]


def user_objects(spec: Any) -> dict[str, Any] | None:
    """The classes and functions a custom model's module defines (``spec``: a
    ``JobSpec``), so that a model using its own layers, losses or metrics (not
    registered with Keras) loads outside the worker as it did in it. The module is the
    job's code: it runs only where code upload is allowed, as on the workers (where it
    is not, the job's trials were refused), so only roles of the cluster call this; a
    client never runs code it read from Redis unless its user asks (``Job.best_model``'s
    ``trust_job_code``). None for a builtin model."""
    from tunecluster import defaults

    if os.environ.get(defaults.ALLOW_CODE_UPLOAD_ENV, "1") == "0":
        return None
    return job_objects(spec)


def job_objects(spec: Any) -> dict[str, Any] | None:
    """``user_objects`` whatever the code-upload switch: for a caller whose user chose
    to run the job's code. None for a builtin model."""
    if spec.model.is_builtin or spec.model.source is None:
        return None
    module = _run_module(spec.model.source, spec.model.module or "model.py",
                         "tunecluster_user")
    return objects_in(vars(module))


def objects_in(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The classes and functions of a module's namespace: Keras's ``custom_objects``."""
    return {name: value for name, value in namespace.items()
            if inspect.isclass(value) or inspect.isfunction(value)}


def module_objects(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``objects_in`` the user's own module file ``path`` (imported here, from this
    machine's disk); ``ModelCodeError`` when it does not import."""
    from pathlib import Path

    file = Path(path)
    try:
        source = file.read_text()
    except OSError as exc:
        raise ModelCodeError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    return objects_in(vars(_run_module(source, str(file), "tunecluster_local")))


def build_checked(build: Callable[..., Any], hp: Any, function: str = "build_model",
                  data: Any = None, compiled: bool = True) -> Any:
    """Call ``build(hp)``, or ``build(hp, data)`` when it takes a second parameter
    (``training_data.takes_data``), and insist on a compiled ``keras.Model``."""
    import keras

    from tunecluster.models.training_data import takes_data

    with_data = takes_data(build)
    call = f"{function}(hp, data)" if with_data else f"{function}(hp)"
    if with_data and data is None:
        raise ModelCodeError(f"{call}: this caller has no training data to give it")
    try:
        model = build(hp, data) if with_data else build(hp)
    except Exception as exc:
        raise ModelCodeError(f"{call} raised {_last_line(exc)}") from exc
    if not isinstance(model, keras.Model):
        raise NotAModel(call, model)
    # a fit or run_trial of the user's own may compile the model itself, or train it
    # without Keras's fit (KerasTuner asks for a keras.Model only)
    # (nor a Model subclass with a fit of its own, which trains it its own way)
    if compiled and not getattr(model, "compiled", False) and \
            type(model).fit is keras.Model.fit:
        raise ModelCodeError(
            f"{call} returned a model that is not compiled; call model.compile()")
    return model


def _last_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def discover_space(source: str, function: str | None, declared: Any,
                   filename: str = "model.py",
                   data: Callable[[], Any] | None = None,
                   objective: str | list[str] | None = None,
                   fit: tuple[str | None, ...] | None = None,
                   compiled: bool | None = None) -> Any:
    """Run ``build_model`` once, as KerasTuner's tuner does, to register its search space.

    ``declared`` is a HyperParameters already holding the spec's own hyperparameters;
    the ones ``build_model`` declares are added to it. Doubles as the submit-time check
    that the module imports and returns a compiled model. ``data`` loads the job's
    ``TrainingData`` for a ``build_model(hp, data)`` (only such a one makes it load).
    ``objective``: refused (``SpecError``) unless the compiled model reports it.
    ``fit``: names of the module's own ``fit(hp, model, *args, **kwargs)`` and
    ``run_trial(trial, *args, **kwargs)``, which must exist (the hyperparameters they
    declare join the space when a trial ends, as in KerasTuner).
    """
    import keras

    from tunecluster.models.training_data import takes_data

    names = [name for name in (function, *(fit or ())) if name]
    found = load_functions(source, names, filename)  # each must be there
    if function is None:  # no hypermodel (a black-box run_trial): its space as declared
        return declared
    build = found[0]
    given = data() if data is not None and takes_data(build) else None
    try:
        model = build_checked(build, declared, function, given,
                              compiled=not any(fit or ()) if compiled is None else compiled)
        # a fit or run_trial of the user's own may return the objective itself
        if objective is not None and not any(fit or ()):
            from tunecluster.models.objective_check import check_objective

            check_objective(model, objective, function)
    finally:
        keras.backend.clear_session()
    return declared


DISCOVER_TIMEOUT_ENV = "TUNECLUSTER_DISCOVER_TIMEOUT_S"
# build_model(hp) at submit time builds one model, no training: a minute is plenty, and
# a build that takes longer (or hangs) would hang `submit` and `validate` without it.
DISCOVER_TIMEOUT_S = 60.0
# TensorFlow's import in the discovery process is not the user's time: its own limit.
IMPORT_TIMEOUT_S = 300.0
_USER_OUTPUT = "--- tunecluster: build_model output follows ---"


def discover_timeout() -> float:
    """The limit on ``build_model`` at submit: ``$TUNECLUSTER_DISCOVER_TIMEOUT_S`` or 60 s."""
    text = os.environ.get(DISCOVER_TIMEOUT_ENV, "")
    try:
        value = float(text) if text.strip() else DISCOVER_TIMEOUT_S
    except ValueError:
        raise ModelCodeError(
            f"{DISCOVER_TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ModelCodeError(f"{DISCOVER_TIMEOUT_ENV}={text!r} must be a number of seconds > 0")
    return value


def discover_space_isolated(model: Any, timeout_s: float | None = None,
                            data: Any = None, files: dict[str, str] | None = None,
                            objective: str | list[str] | None = None) -> dict[str, Any]:
    """``discover_space`` in a child process, with a limit; returns the space's config.

    The user's module runs in a process of its own, so a ``build_model`` that hangs,
    exits or crashes the interpreter costs a one-line error naming the function, not
    the caller (``submit``/``validate``). ``model`` is the spec's ``Model`` section;
    ``data`` its ``Data`` section, loaded there for a ``build_model(hp, data)`` as the
    workers will load it (``files``: where the data files it names are on this machine).
    """
    limit = discover_timeout() if timeout_s is None else timeout_s
    function = model.function or model.run_trial or "build_model"
    request = json.dumps({
        "model": model.model_dump(mode="json", by_alias=True),
        "data": data.model_dump(mode="json", by_alias=True) if data is not None else None,
        "files": files or {}, "objective": objective})
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from tunecluster.models.custom import _discover_main;"
                                   " _discover_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
            env={"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}, start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, name="discover-reader", daemon=True).start()
        try:
            assert proc.stdin is not None
            proc.stdin.write(request)
            proc.stdin.close()
            ready = _next_line(lines, IMPORT_TIMEOUT_S)
            answer = _next_line(lines, limit) if ready == "ready\n" else ready
            if answer == "":
                raise ModelCodeError(
                    f"{function}(hp) did not return within {limit:g} s (the limit on"
                    f" discovering the search space at submit; {DISCOVER_TIMEOUT_ENV}"
                    " sets it)")
            if answer is None:
                code = proc.wait()
                errors.seek(0)
                # what the user's code wrote, not TensorFlow's start-up chatter
                text = errors.read().decode(errors="replace").rpartition(_USER_OUTPUT)[2]
                tail = [ln for ln in text.splitlines() if ln.strip()]
                raise ModelCodeError(
                    f"{function}(hp) ended the discovery process ({_exit_text(code)})"
                    + (f": {tail[-1][:300]}" if tail else ""))
            result = json.loads(answer)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if "spec_error" in result:  # a wrong objective: the job's fault, not the code's
        raise SpecError(*result["spec_error"])
    if "error" in result:
        raise ModelCodeError(result["error"])
    return dict(result["space"])


def _next_line(lines: queue.Queue[str | None], timeout_s: float) -> str | None:
    """The next line; None at end of output; "" when none came within ``timeout_s``."""
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        return ""


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _discover_main() -> None:
    """The discovery process: a request on stdin, "ready" then one JSON answer on stdout."""
    answer_to = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the user's prints go to stderr, never into the answer
    request = json.loads(sys.stdin.read())
    from tunecluster.quiet import import_tensorflow

    import_tensorflow()  # before "ready": not part of the user's limit

    from tunecluster.spec.models import Data, Model
    from tunecluster.spec.space import build_space, space_to_json

    model = Model.model_validate(request["model"])
    data_spec = Data.model_validate(request["data"]) if request.get("data") else None
    files = dict(request.get("files") or {})

    def training_data() -> Any:
        from tunecluster.data import DataError, load_splits
        from tunecluster.models.training_data import TrainingData

        if data_spec is None:
            raise ModelCodeError(f"{model.function}(hp, data): no data to give it here")
        try:
            splits = load_splits(data_spec, model.task, lambda p: files.get(p, p))
        except DataError as exc:
            raise ModelCodeError(f"data: {exc}") from None
        return TrainingData.from_splits(splits)

    answer_to.write("ready\n")
    answer_to.flush()
    sys.stderr.write(_USER_OUTPUT + "\n")
    sys.stderr.flush()
    try:
        assert model.source is not None
        hp = discover_space(model.source, model.function, build_space(model.hyperparameters),
                            model.module or "model.py", training_data,
                            request.get("objective"), (model.fit, model.run_trial))
        answer: dict[str, Any] = {"space": space_to_json(hp)}
    except TrialFailed as exc:
        answer = {"error": str(exc)}
    except SpecError as exc:
        answer = {"spec_error": [exc.path, exc.message]}
    answer_to.write(json.dumps(answer) + "\n")
    answer_to.flush()
