"""A search's Keras callbacks travel to the workers as Python source, as the hypermodel does.

KerasTuner hands every execution of every trial a deep copy of the callbacks given to
``search()``. On the cluster, each callback (other than ``EarlyStopping``, which becomes
the job's ``train.early_stopping``, and ``TensorBoard``, written from the records when the
search ends) is rebuilt in the shipped module from its class and its state: a Keras
callback's class is imported on the worker, one of the user's own travels as source
(``shipping.py``); its attributes travel as literals and arrays, functions it holds (a
``LearningRateScheduler``'s schedule) as code. The module's ``callbacks()`` returns a deep
copy of them for each execution (``model.callbacks``). What Keras sets when training
starts (the model, its params) is left for the worker's own training to set.

Refused in one line, before anything is queued: a callback that cannot be deep-copied
(KerasTuner's ``FatalValueError``, with its message), one holding a value that cannot
travel (named). A callback runs on the workers: what it writes (``CSVLogger``,
``ModelCheckpoint``) lands on their disks, what it prints in their logs.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

from tunecluster.errors import SpecError

FIELD = "callbacks"
# Set by Keras when training starts (Keras 3's, then Keras 2's): not part of a callback's
# configuration, and a model never travels; they travel as None.
_SET_BY_KERAS = ("params", "_model", "model")


def deep_copyable(callbacks: Sequence[Any]) -> None:
    """KerasTuner's check, with its error and words: every execution gets a copy."""
    from keras_tuner.errors import FatalValueError

    try:
        copy.deepcopy(list(callbacks))
    except Exception:  # noqa: BLE001 - whatever deepcopy raises, KerasTuner's answer
        raise FatalValueError("All callbacks used during a search should be deep-copyable"
                              " (since they are reused across trials). It is not possible"
                              f" to do `copy.deepcopy({list(callbacks)})`") from None


def add_callbacks(shipper: Any, callbacks: Sequence[Any]) -> str:
    """Rebuild ``callbacks`` in the shipped module; the name of its ``callbacks()``."""
    from tunecluster.api.shipping import _free_name

    names = []
    for cb in callbacks:
        cls = type(cb)
        name = _free_name(f"_tc_callback_{cls.__name__}", shipper.bound)
        shipper.bound[name] = cb
        class_name = _bind(shipper, cls.__name__, cls, f"callback {cls.__name__}")
        state = {k: "None" if k in _SET_BY_KERAS else _value(shipper, name, cb, k, v)
                 for k, v in vars(cb).items()}
        items = ", ".join(f"{k!r}: {expr}" for k, expr in state.items())
        shipper.tail.append(f"\n{name} = {class_name}.__new__({class_name})\n"
                            f"{name}.__dict__.update({{{items}}})\n")
        names.append(name)
    function = _free_name("_tc_callbacks", shipper.bound)
    shipper.bound[function] = None
    shipper.imports.append("import copy as _tc_copy")
    shipper.tail.append(f"\n\ndef {function}():\n"
                        f"    return _tc_copy.deepcopy([{', '.join(names)}])\n")
    return function


def _value(shipper: Any, name: str, cb: Any, key: str, value: Any) -> str:
    """An expression for the attribute ``key`` of callback ``cb``: code for a function or
    class it holds, else what ``value_expr`` makes of a value (a one-line refusal when
    it cannot travel)."""
    from tunecluster.api.shipping import _free_name

    where = f"{type(cb).__name__}.{key}"
    if inspect.isfunction(value) and value.__name__ == "<lambda>":
        fn_name = _free_name(f"{name}_{key}", shipper.bound)
        shipper.add_lambda(fn_name, value)
        return fn_name
    if inspect.isfunction(value) or inspect.isclass(value):
        return _bind(shipper, value.__name__, value, where)
    try:
        return str(shipper.value_expr(f"{name}_{key}", value, where))
    except SpecError as exc:
        raise SpecError(FIELD, f"{type(cb).__name__} cannot travel to the workers: its"
                               f" attribute {key!r} holds a {type(value).__name__}"
                               " (literals, arrays and functions travel)") from exc


def _bind(shipper: Any, name: str, value: Any, where: str) -> str:
    """The name the shipped module holds ``value`` (a function or class) under: ``name``
    when it holds it already or the name is free, else a free one."""
    from tunecluster.api.shipping import _free_name

    if shipper.bound.get(name) is not value:
        name = _free_name(name, shipper.bound)
        shipper.add_global(name, value, where)
    return name
