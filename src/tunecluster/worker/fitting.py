"""How one execution of a trial trains, and what its training returned, read as KerasTuner
reads it.

A trial trains ``train.executions_per_trial`` times (KerasTuner's executions_per_trial),
each time a freshly built model. Each execution calls either Keras's ``model.fit`` on the
job's cached ``tf.data`` pipelines (the fast path), or the module's own
``fit(hp, model, *args, **kwargs)`` (``model.fit`` in the spec; the drop-in ships a
``HyperModel``'s ``fit`` as one), given the arguments KerasTuner gives ``HyperModel.fit``:
``x`` and ``y`` as arrays, then ``validation_data``, ``epochs``, ``batch_size``,
``shuffle``, ``verbose`` (those ``model.fit_kwargs`` names; the drop-in names those its
user gave ``search()``), ``callbacks`` always (the worker's epoch reporter first, then the
search's own), and ``epochs``/``initial_epoch`` where Hyperband or a resume sets them.

What ``fit`` returns counts as in KerasTuner: a ``History`` (its best epoch by the
objective), a dict of metrics holding the objective, a number (the objective), or a list
of those (averaged). The trial's metrics are the mean over its executions of each one's
metrics, its best epoch the mean of theirs (``summarize``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tunecluster.errors import TrialFailed
from tunecluster.spec.objective import DEFAULT_OBJECTIVE, with_objective

# A multi-objective's (name, direction) parts, or None (spec Search.objective_parts)
Parts = list[tuple[str, str]] | None

# The search() arguments the module's fit may be given, in KerasTuner's order.
FIT_KWARGS = ("validation_data", "epochs", "batch_size", "shuffle", "verbose",
              "class_weight", "sample_weight")
VALIDATION_BATCH = 1024


# What an execution "returned" when its epochs are the ones the worker's reporter saw
# (Keras's own fit; a resumed trial with no epoch left to train).
TRACKED = object()


@dataclass
class Execution:
    """One execution's outcome: the epochs the reporter saw (``{"epoch": n, **logs}``)
    and what its training returned."""

    rows: list[dict[str, float]]
    returned: Any


def fit_once(rt: Any, hp: Any, model: Any, callbacks: list[Any],
             epoch_kwargs: dict[str, Any], *, epochs: int, seed: int | None,
             strategy: Any) -> Any:
    """Train ``model`` once: the module's ``fit`` when the job names one, else Keras's.
    ``epoch_kwargs``: ``initial_epoch`` (a resume, Hyperband) and Hyperband's ``epochs``."""
    from tunecluster.worker.strategy import shard_by_data

    spec = rt.spec
    if rt.fit_fn is None:
        return model.fit(
            shard_by_data(strategy, rt.dataset(
                "train", spec.train.batch_size, spec.train.shuffle,
                spec.data.split.seed if seed is None else seed)),
            validation_data=shard_by_data(strategy, rt.dataset(
                "valid", validation_batch_size(spec.train.batch_size), False, 0)),
            epochs=epochs, initial_epoch=epoch_kwargs.get("initial_epoch", 0),
            callbacks=callbacks, class_weight=spec.train.class_weight,
            shuffle=False,  # the tf.data pipeline shuffles already
            verbose=0)
    args, kwargs = search_arguments(rt, epochs)
    return rt.fit_fn(hp, model, *args, **{**kwargs, **epoch_kwargs, "callbacks": callbacks})


def search_arguments(rt: Any, epochs: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """What KerasTuner's ``search()`` hands ``run_trial`` and ``HyperModel.fit``: ``x`` and
    ``y`` as arrays, and those of its arguments the job names (``model.fit_kwargs``)."""
    spec, splits = rt.spec, rt.splits
    given = spec.model.fit_kwargs if spec.model.fit_kwargs is not None else FIT_KWARGS
    values = {"epochs": epochs, "batch_size": spec.train.batch_size,
              "shuffle": spec.train.shuffle,
              "verbose": 0,  # a worker's log is no terminal: no progress bars
              "class_weight": spec.train.class_weight}
    args: tuple[Any, ...] = ()  # a search called without data: none is passed on
    if splits is not None:
        values["validation_data"] = (splits.x_valid, splits.y_valid) if splits.w_valid is None \
            else (splits.x_valid, splits.y_valid, splits.w_valid)
        values["sample_weight"] = splits.w_train
        args = (splits.x_train, splits.y_train)
    return args, {name: values[name] for name in FIT_KWARGS
                  if name in given and values.get(name) is not None}


def summarize(executions: Sequence[Execution], objective: str, direction: str,
              who: str, parts: Parts = None) -> tuple[dict[str, float], int]:
    """``(metrics, best epoch)`` of the trial: the mean over its executions of each one's
    metrics (KerasTuner's ``average_metrics_dicts``) and the mean of their best epochs
    (1-based, rounded down as KerasTuner does)."""
    read = [execution_metrics(e, objective, direction, who, parts) for e in executions]
    return average([m for m, _ in read]), int(sum(b for _, b in read) / len(read))


def execution_metrics(execution: Execution, objective: str, direction: str,
                      who: str, parts: Parts = None) -> tuple[dict[str, float], int]:
    """One execution's metrics and best epoch, from what its training returned."""
    returned = execution.returned
    if objective == DEFAULT_OBJECTIVE and _no_default_score(returned):
        raise TrialFailed(f"Expected the return value of {who} to be a single float when"
                          " `objective` is left unspecified; it returned a"
                          f" {type(returned).__name__}: {str(returned)[:80]!r} (or give"
                          " the search an objective)", fatal="FatalTypeError")
    if returned is TRACKED:
        best = best_row(execution.rows, objective, direction)
        return without_epoch(best), int(best["epoch"])
    if isinstance(returned, list):
        if not returned:
            raise TrialFailed(f"{who} returned an empty list; return its metrics")
        each = [execution_metrics(Execution(execution.rows, r), objective, direction, who,
                                  parts) for r in returned]
        return average([m for m, _ in each]), int(sum(b for _, b in each) / len(each))
    if _is_history(returned):
        rows = execution.rows or [with_objective(r, objective, parts)
                                  for r in _history_rows(returned)]
        if not rows:
            raise TrialFailed(f"{who} returned a History of no epoch")
        best = best_row(rows, objective, direction)
        return _numbers(without_epoch(best), objective, who, parts), int(best["epoch"])
    last = int(execution.rows[-1]["epoch"]) if execution.rows else 1
    if _is_number(returned):  # Python's or numpy's
        return _numbers({objective: float(returned)}, objective, who), last
    if isinstance(returned, Mapping):
        return _numbers(dict(returned), objective, who, parts), last
    # What KerasTuner refuses with a fatal error, which ends the search at once
    if returned is None:
        raise TrialFailed(f"{who} returned None. Did you forget to return the metrics?"
                          " (a History, a dict of metrics, or the objective's value)",
                          fatal="FatalTypeError")
    raise TrialFailed(f"Expected the return value of {who} to be one of float, dict,"
                      " keras.callbacks.History, or a list of one of these types;"
                      f" it returned a {type(returned).__name__}: {str(returned)[:80]!r}",
                      fatal="FatalTypeError")


def untracked_rows(returned: Any, objective: str, direction: str,
                   who: str, parts: Parts = None) -> list[dict[str, float]]:
    """The epochs of an execution that trained without the worker's callback (the user's
    own loop, a fit that dropped ``callbacks``), from what it returned: a History's
    epochs, else one row of the metrics returned."""
    rows = _history_rows(returned) if _is_history(returned) else []
    if rows:
        return [with_objective(r, objective, parts) for r in rows]
    metrics, epoch = execution_metrics(Execution([], returned), objective, direction, who,
                                       parts)
    return [{"epoch": epoch, **metrics}]


def validation_batch_size(batch_size: int) -> int:
    """Validation needs no small batches (no gradients): fewer, larger steps are faster,
    and the metrics are the same sample-weighted means."""
    return max(batch_size, VALIDATION_BATCH)


def average(metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over the dicts that hold it."""
    names = list(dict.fromkeys(k for m in metrics for k in m))
    return {k: sum(m[k] for m in metrics if k in m) / sum(1 for m in metrics if k in m)
            for k in names}


def mean_rows(executions: Sequence[Sequence[Mapping[str, float]]]) -> list[dict[str, float]]:
    """Per epoch, the mean of the executions that reached it: the trial's epoch curve."""
    by_epoch: dict[int, list[Mapping[str, float]]] = {}
    for rows in executions:
        for row in rows:
            by_epoch.setdefault(int(row["epoch"]), []).append(without_epoch(row))
    return [{"epoch": epoch, **average(rows)} for epoch, rows in sorted(by_epoch.items())]


def without_epoch(row: Mapping[str, Any]) -> dict[str, Any]:
    """A history row's metrics (``{"epoch": n, **metrics}`` less its epoch)."""
    return {k: v for k, v in row.items() if k != "epoch"}


def report_rows(reporter: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Report history rows to ``reporter``, one epoch each."""
    for row in rows:
        reporter.epoch(int(row["epoch"]), without_epoch(row))


def best_row(rows: Sequence[Mapping[str, float]], objective: str,
             direction: str) -> dict[str, float]:
    scored = [row for row in rows if objective in row]
    if not scored:
        names = sorted({k for row in rows for k in row if k != "epoch"})
        raise TrialFailed(f"objective {objective!r} is not reported by the model; it"
                          f" reports: {', '.join(names) or 'nothing'}")
    pick = max if direction == "max" else min
    return dict(pick(scored, key=lambda r: r[objective]))


class MeanReporter:
    """The reporter of an execution after the first: each epoch goes out as the mean of
    that epoch over the executions so far, so the trial's curve (and the chief's view)
    is the executions' mean, as its final metrics are."""

    def __init__(self, reporter: Any, earlier: Sequence[Sequence[Mapping[str, float]]]
                 ) -> None:
        self.reporter, self.earlier = reporter, earlier

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        same = [without_epoch(row) for rows in self.earlier for row in rows
                if row["epoch"] == epoch]
        return bool(self.reporter.epoch(epoch, average([*same, metrics])))

    def __getattr__(self, name: str) -> Any:  # a gang's decide(), a list reporter's rows
        return getattr(self.reporter, name)


def _numbers(metrics: dict[str, Any], objective: str, who: str,
             parts: Parts = None) -> dict[str, float]:
    numeric = {k: v for k, v in metrics.items() if _is_number(v)}
    metrics = {**metrics, **with_objective(
        {str(k): float(v) for k, v in numeric.items()}, objective, parts)}
    if objective not in metrics:
        raise TrialFailed(f"{who} returned metrics without the objective {objective!r}:"
                          f" {', '.join(sorted(map(str, metrics))) or 'none'}",
                          fatal="FatalValueError")  # KerasTuner's, for a dict
    out = {}
    for name, value in metrics.items():
        if not _is_number(value):
            raise TrialFailed(f"{who} returned metric {name!r} = {value!r}, not a number")
        out[str(name)] = float(value)
    if not math.isfinite(out[objective]):
        raise TrialFailed(f"{objective} is {out[objective]} ({who})")
    return out


def _no_default_score(returned: Any) -> bool:
    """Whether ``returned`` holds no number for KerasTuner's default objective (None,
    the worker's own epochs and a list's parts are judged on their own)."""
    if returned is None or returned is TRACKED or _is_number(returned) \
            or isinstance(returned, list):
        return False
    return not (isinstance(returned, Mapping) and DEFAULT_OBJECTIVE in returned)


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, str, bytes)):  # float("0.5") parses: no number to KT
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return getattr(value, "ndim", 0) == 0


def _is_history(value: Any) -> bool:
    import keras

    return isinstance(value, keras.callbacks.History)


def _history_rows(history: Any) -> list[dict[str, float]]:
    logs = history.history or {}
    epochs = getattr(history, "epoch", None) or range(len(next(iter(logs.values()), [])))
    return [{"epoch": int(e) + 1, **{k: float(v[i]) for k, v in logs.items() if i < len(v)}}
            for i, e in enumerate(epochs)]
