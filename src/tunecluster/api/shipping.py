"""A hypermodel travels as Python source: its code plus the globals it reads.

``ship(hypermodel)`` turns a ``build_model(hp)`` function (from a script, an imported
module or a notebook cell) or a ``keras_tuner.HyperModel`` instance into one module's
source text, the same form as a job file's ``model.module``. Workers execute it under
the code-upload trust model (``TUNECLUSTER_ALLOW_CODE_UPLOAD``), as for any custom model.

What the source holds, for each global name the code reads (found from its bytecode,
recursively through the helpers it calls):

- a module: ``import numpy as np`` (the worker must have the same package installed);
- a function or class from an installed package: ``from pkg.mod import name``;
- a function or class of the user's own (``__main__``, a notebook, a module outside
  site-packages): its source, and in turn what that reads;
- a literal (number, string, bool, None, and lists / tuples / dicts of them): its ``repr``;
- a numpy array (or pandas object): saved with ``numpy.savez_compressed``, embedded as
  base64, loaded with ``allow_pickle=False``: data never crosses as a pickle;
- anything else: a one-line ``SpecError`` naming the global and its type.

A closure's free variables are shipped the same way, as module globals.
"""

from __future__ import annotations

import ast
import base64
import dis
import inspect
import io
import sys
import sysconfig
import textwrap
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tunecluster.errors import SpecError

# Captured arrays travel inside the job's spec: bounded so a job record stays small
# (data belongs in x/y, which travel as files).
MAX_CAPTURED_BYTES = 16 * 1024 * 1024
FIELD = "hypermodel"
_LITERALS = (int, float, str, bool, type(None), bytes)


class Shipped(NamedTuple):
    """A hypermodel (and a tuner's own ``run_trial``) as one module's source."""

    source: str
    function: str | None  # its build(hp); None: no hypermodel (a black-box run_trial)
    fit: str | None = None  # a HyperModel's own fit(hp, model, *args, **kwargs)
    run_trial: str | None = None  # a tuner's own run_trial(trial, *args, **kwargs)
    callbacks: str | None = None  # callbacks(): the search's Keras callbacks, new each call


def ship(hypermodel: Any, tuner: Any = None, worker_settings: str = "",
         compile_overrides: dict[str, Any] | None = None,
         callbacks: Sequence[Any] = ()) -> Shipped:
    """The module's text and the names of its ``build(hp)``, of the ``fit`` of a
    ``HyperModel`` with a ``fit`` of its own (None: trials call Keras's ``fit``), and with
    ``tuner`` (a drop-in tuner whose class has its own ``run_trial``) of a
    ``run_trial(trial, *args, **kwargs)`` calling that tuner's: its class travels as
    source, its own attributes (``tuner.user_attributes()``) as values, and on the worker
    ``tuner.on_worker(hypermodel, build, <worker_settings>)`` gives it the hypermodel.
    ``compile_overrides`` (Keras's serialized configs): the built model is compiled again
    with them (KerasTuner's ``Tuner(optimizer=, loss=, metrics=)``). ``callbacks``: the
    search's Keras callbacks, rebuilt by the module's ``callbacks()`` (a copy per call)."""
    from tunecluster.api.tuner_inputs import own_fit

    shipper = _Shipper()
    fit = run_trial = None
    function: str | None = None
    held = "None"  # what the shipped module holds as the hypermodel
    if hypermodel is None and tuner is not None:
        pass  # a tuner's own run_trial without a hypermodel: a black-box search
    elif inspect.isfunction(hypermodel) and hypermodel.__name__ == "<lambda>":
        function = held = "_tc_lambda_build"
        shipper.add_lambda(function, hypermodel)
    elif inspect.isfunction(hypermodel):
        shipper.add_callable(hypermodel.__name__, hypermodel)
        function = held = hypermodel.__name__
    elif hasattr(hypermodel, "build") and callable(hypermodel.build):
        cls = type(hypermodel)
        shipper.add_callable(cls.__name__, cls)
        items = _state(shipper, "_tc_hypermodel", hypermodel, vars(hypermodel))
        # The wrapper is named after the class, never after a global the shipped module
        # holds: a build() that calls the module's own build_model() must reach that one.
        function = _free_name(f"{cls.__name__}_build", shipper.bound)
        held = "_tc_hypermodel"
        shipper.tail.append(
            f"_tc_hypermodel = {cls.__name__}.__new__({cls.__name__})\n"
            f"_tc_hypermodel.__dict__.update({{{items}}})\n\n\n"
            f"def {function}(hp):\n    return _tc_hypermodel.build(hp)\n")
        if own_fit(hypermodel):
            fit = _free_name(f"{cls.__name__}_fit", {**shipper.bound, function: None})
            shipper.tail.append(
                f"\n\ndef {fit}(hp, model, *args, **kwargs):\n"
                "    return _tc_hypermodel.fit(hp, model, *args, **kwargs)\n\n\n"
                # what the worker's errors call it, in KerasTuner's words
                f"{fit}.__qualname__ = 'HyperModel.fit'\n")
    else:
        raise SpecError(FIELD, "`hypermodel` argument should be either a build_model(hp)"
                               " function or a keras_tuner.HyperModel, got"
                               f" {type(hypermodel).__name__}")  # KerasTuner's words
    if compile_overrides and function is not None:
        inner = function
        function = _free_name(f"{inner}_compiled", {**shipper.bound, fit: None})
        shipper.imports.append("from tunecluster.api.tuner_on_worker import override_compile"
                               " as _tc_override_compile")
        shipper.tail.append(
            f"\n\ndef {function}(hp):\n"
            f"    return _tc_override_compile({inner}(hp), {compile_overrides!r})\n")
    if tuner is not None:
        cls = type(tuner)
        shipper.add_callable(cls.__name__, cls)
        items = _state(shipper, "_tc_tuner", tuner, tuner.user_attributes())
        run_trial = _free_name(f"{cls.__name__}_run_trial",
                               {**shipper.bound, function: None, fit: None})
        shipper.tail.append(
            f"\n\n_tc_tuner = {cls.__name__}.__new__({cls.__name__})\n"
            f"_tc_tuner.__dict__.update({{{items}}})\n"
            f"_tc_tuner.on_worker({held}, {function}{worker_settings})\n\n\n"
            f"def {run_trial}(trial, *args, **kwargs):\n"
            "    return _tc_tuner.run_trial(trial, *args, **kwargs)\n\n\n"
            f"{run_trial}.__qualname__ = 'Tuner.run_trial'\n")
    made = None
    if callbacks:  # the search's own, each execution a copy (callback_shipping.py)
        from tunecluster.api.callback_shipping import add_callbacks

        made = add_callbacks(shipper, callbacks)
    return Shipped(shipper.source(), function, fit, run_trial, made)


def _state(shipper: _Shipper, name: str, instance: Any, attributes: dict[str, Any]) -> str:
    """The ``{attribute: expression}`` items that rebuild an instance's state."""
    cls = type(instance).__name__
    state = {k: f"{name}.{v.__func__.__name__}"  # self.build = self._wrapper
             if inspect.ismethod(v) and v.__self__ is instance
             else shipper.value_expr(f"{name}_{k}", v, f"{cls}.{k}")
             for k, v in attributes.items()}
    return ", ".join(f"{k!r}: {expr}" for k, expr in state.items())


def _free_name(name: str, taken: dict[str, Any]) -> str:
    """``name``, or with underscores added until the shipped module holds no such
    global: a ``build()`` that calls the module's own ``build_model()`` must reach it."""
    while name in taken:
        name += "_"
    return name


class _Shipper:
    def __init__(self) -> None:
        self.imports: list[str] = []
        self.values: list[str] = []
        self.defs: list[str] = []
        self.tail: list[str] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.bound: dict[str, Any] = {}  # name -> the object it holds in the shipped module
        self.shipped: set[int] = set()

    # --- what a name holds -------------------------------------------------------------

    def add_global(self, name: str, value: Any, where: str) -> None:
        if name in self.bound:
            if self.bound[name] is not value and not _same_literal(self.bound[name], value):
                raise SpecError(FIELD, f"two globals named {name!r} with different values"
                                       f" ({where}); rename one")
            return
        self.bound[name] = value
        if inspect.ismodule(value):
            if value.__name__ == "__main__" or not _installed(value):
                raise SpecError(FIELD, f"{where} reads module {name!r} ({value.__name__}),"
                                       " which is not an installed package; import what it"
                                       " needs directly")
            self.imports.append(f"import {value.__name__} as {name}")
        elif inspect.isfunction(value) or inspect.isclass(value):
            module = sys.modules.get(value.__module__)
            if module is not None and module.__name__ != "__main__" and _installed(module) \
                    and getattr(module, value.__qualname__, None) is value:
                self.imports.append(f"from {module.__name__} import {value.__qualname__}"
                                    f" as {name}")
            else:
                self.add_callable(name, value)
        else:
            self.values.append(f"{name} = {self.value_expr(name, value, where)}")

    def value_expr(self, key: str, value: Any, where: str) -> str:
        """A Python expression that rebuilds ``value`` in the shipped module."""
        if _is_literal(value):
            return repr(value)
        if hasattr(value, "to_numpy") and not isinstance(value, np.ndarray):
            value = value.to_numpy()
        if isinstance(value, (np.ndarray, np.generic)):
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise SpecError(FIELD, f"{where}: array {key!r} holds Python objects;"
                                       " only numeric/bool/str arrays travel")
            if isinstance(value, np.generic):
                return repr(value.item())
            self.arrays[key] = array
            return f"_tc_arrays[{key!r}]"
        raise SpecError(FIELD, f"{where} reads global {key!r} of type {type(value).__name__},"
                               " which cannot travel (literals, numpy arrays, functions,"
                               " classes and modules can); compute it inside build_model")

    def add_callable(self, name: str, value: Any) -> None:
        if id(value) in self.shipped:
            return
        self.shipped.add(id(value))
        self.bound.setdefault(name, value)
        try:
            source = textwrap.dedent(inspect.getsource(value))
        except (OSError, TypeError) as exc:
            raise SpecError(FIELD, f"cannot read the source of {value.__qualname__}"
                                   f" ({exc}); define it in a file or a notebook cell") from None
        if inspect.isclass(value):
            self._scan_class(value, source)
        else:
            self._scan_function(value)
        self.defs.append(source)
        if value.__name__ != name:
            self.defs.append(f"{name} = {value.__name__}\n")

    def add_lambda(self, name: str, fn: types.FunctionType) -> None:
        """A lambda (``hypermodel=lambda hp: ...``) as ``name = <its source>``: the one
        lambda on its line that takes the same arguments, cut from its file's source."""
        self.bound[name] = fn
        self.defs.append(f"{name} = {_lambda_source(fn)}\n")
        self._scan_function(fn)

    # --- which globals code reads --------------------------------------------------------

    def _scan_function(self, fn: types.FunctionType) -> None:
        where = fn.__qualname__
        for name in sorted(_global_names(fn.__code__)):
            if name in fn.__globals__:
                self.add_global(name, fn.__globals__[name], where)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
            if name == "__class__":  # zero-arg super()'s cell: the class statement's own
                continue
            self.add_global(name, cell.cell_contents, where)

    def _scan_class(self, cls: type, source: str) -> None:
        module = sys.modules.get(cls.__module__)
        globs = vars(module) if module is not None else {}
        tree = ast.parse(source).body[0]
        assert isinstance(tree, ast.ClassDef)
        heads = [*tree.bases, *tree.decorator_list, *(k.value for k in tree.keywords)]
        names = {n.id for h in heads for n in ast.walk(h) if isinstance(n, ast.Name)}
        for name in sorted(names):
            if name in globs:
                self.add_global(name, globs[name], cls.__qualname__)
        for attr in vars(cls).values():
            for fn in _functions_of(attr):
                self._scan_function(fn)

    # --- the module's text ------------------------------------------------------------------

    def source(self) -> str:
        parts = ['"""Shipped by tunecluster.keras_tuner from the caller\'s hypermodel."""\n']
        parts += sorted(set(self.imports), key=self.imports.index)
        if self.arrays:
            parts.append(_arrays_loader(self.arrays))
        parts += self.values
        parts += [""] + self.defs + self.tail
        return "\n".join(parts) + "\n"


def _lambda_source(fn: types.FunctionType) -> str:
    import linecache

    code = fn.__code__
    text = "".join(linecache.getlines(code.co_filename))
    try:
        tree = ast.parse(text)
    except SyntaxError:
        tree = None
    params = list(code.co_varnames[:code.co_argcount])
    found = [node for node in ast.walk(tree) if isinstance(node, ast.Lambda)
             and node.lineno == code.co_firstlineno
             and [a.arg for a in node.args.args] == params] if tree is not None else []
    if len(found) != 1:
        raise SpecError(FIELD, "this lambda's source cannot be told apart (one lambda per"
                               " line travels); define build_model(hp) with def")
    segment = ast.get_source_segment(text, found[0])
    assert segment is not None
    return " ".join(segment.split("\n"))  # one expression, on one line


def _arrays_loader(arrays: dict[str, np.ndarray]) -> str:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    data = buffer.getvalue()
    if len(data) > MAX_CAPTURED_BYTES:
        names = ", ".join(sorted(arrays))
        raise SpecError(FIELD, f"the arrays build_model reads ({names}) are"
                               f" {len(data) / 2**20:.1f} MiB compressed, over the"
                               f" {MAX_CAPTURED_BYTES // 2**20} MiB a hypermodel may carry;"
                               " compute them inside build_model or pass them as data")
    text = base64.b64encode(data).decode()
    return ("\n\ndef _tc_load_arrays(text):\n"
            "    import base64, io\n"
            "    import numpy\n"
            "    with numpy.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as f:\n"
            "        return {k: f[k] for k in f.files}\n\n\n"
            f"_tc_arrays = _tc_load_arrays({text!r})\n")


def _global_names(code: types.CodeType) -> set[str]:
    names = {i.argval for i in dis.get_instructions(code)
             if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    # names no source can hold (pytest's assertion rewriting loads '@pytest_ar' in the
    # bytecode of the tests it imports) are not the code's globals
    return {n for n in names if isinstance(n, str) and n.isidentifier()}


def _functions_of(attr: Any) -> list[types.FunctionType]:
    if isinstance(attr, (staticmethod, classmethod)):
        attr = attr.__func__
    if isinstance(attr, property):
        return [f for f in (attr.fget, attr.fset, attr.fdel) if inspect.isfunction(f)]
    return [attr] if inspect.isfunction(attr) else []


def _is_literal(value: Any) -> bool:
    if isinstance(value, _LITERALS):
        if isinstance(value, float) and not np.isfinite(value):
            return False
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_is_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_is_literal(k) and _is_literal(v) for k, v in value.items())
    return False


def _same_literal(a: Any, b: Any) -> bool:
    return _is_literal(a) and _is_literal(b) and a == b


_SITE = {Path(p).resolve() for key in ("purelib", "platlib", "stdlib", "platstdlib")
         if (p := sysconfig.get_paths().get(key))}


def _installed(module: types.ModuleType) -> bool:
    """An installed package (or the standard library), importable on a worker by name;
    a module of the user's own (next to the notebook) is shipped as source instead."""
    top = module.__name__.split(".")[0]
    if module.__name__ in sys.builtin_module_names or top == "tunecluster":
        return True
    file = getattr(module, "__file__", None)
    if file is None:
        return True  # namespace packages, frozen modules
    path = Path(file).resolve()
    return any(path.is_relative_to(site) for site in _SITE)

