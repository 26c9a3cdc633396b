"""A job's trials as TensorBoard runs with the HParams plugin's summaries.

Layout under ``logdir`` (what ``tensorboard --logdir DIR`` reads):

    DIR/                the experiment: ``hparams_config`` (every hyperparameter of the
                        job's search space with its domain, and every metric)
    DIR/<trial>/        one run per trial: each epoch's metrics as scalars (step = the
                        epoch), ``score`` (the trial's objective score, when it has one),
                        and ``hparams`` (the trial's values, ``trial_id`` = the trial id)

Domains come from the job's recorded search space (KerasTuner's config): ``Choice``,
``Boolean`` and ``Fixed`` -> Discrete, ``Int`` -> IntInterval, ``Float`` -> RealInterval.
Reads only Redis; imports TensorFlow (quietly) to write the event files.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunecluster.errors import StoreError
from tunecluster.ids import is_trial_id
from tunecluster.store import Store
from tunecluster.store.results import build_results

SCORE = "score"  # the scalar tag of a trial's objective score
EVENTS_GLOB = "events.out.tfevents.*"


@dataclass(frozen=True)
class Exported:
    """What ``export`` wrote."""

    logdir: Path
    runs: list[str]  # one per trial, named by its id
    hyperparameters: list[str]
    metrics: list[str]


def domains(space: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Hyperparameter name -> (kind, domain arguments) from a KerasTuner space config:
    ("discrete", values), ("int", (lo, hi)) or ("real", (lo, hi)). Pure, no TensorFlow."""
    out: dict[str, tuple[str, Any]] = {}
    for entry in space.get("space") or []:
        if not isinstance(entry, Mapping):
            continue
        kind, cfg = entry.get("class_name"), entry.get("config") or {}
        name = cfg.get("name")
        if not isinstance(name, str):
            continue
        if kind == "Choice":
            out[name] = ("discrete", list(cfg.get("values") or []))
        elif kind == "Boolean":
            out[name] = ("discrete", [False, True])
        elif kind == "Fixed":
            out[name] = ("discrete", [cfg.get("value")])
        elif kind == "Int":
            out[name] = ("int", (int(cfg["min_value"]), int(cfg["max_value"])))
        elif kind == "Float":
            out[name] = ("real", (float(cfg["min_value"]), float(cfg["max_value"])))
    return out


def export(store: Store, job: str, logdir: str | Path, *, overwrite: bool = False) -> Exported:
    """Write the job's trials (finished or not) as TensorBoard runs under ``logdir``.

    A ``logdir`` holding event files is refused (runs would be doubled), unless
    ``overwrite``: then the event files of the experiment and of the runs named like
    this job's trials are removed first, and nothing else."""
    results = build_results(store.jobs, job)  # StoreError for an unknown job
    space = store.jobs.get(job).space
    root = Path(logdir)
    trials = [t for t in results["trials"] if is_trial_id(t["trial"])]  # ids become paths
    _prepare(root, [t["trial"] for t in trials], overwrite)
    epochs = {t["trial"]: store.jobs.epochs(job, t["trial"]) for t in trials}
    metric_names = sorted({name for per_trial in epochs.values()
                           for metrics in per_trial.values() for name in metrics})
    known = domains(space)
    names = list(known) + sorted({name for t in trials for name in t["hyperparameters"]
                                  if name not in known})

    from tunecluster.quiet import import_tensorflow

    import_tensorflow()
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    params = {name: _hparam(hp, name, known.get(name)) for name in names}
    objective = results["objective"]
    metrics = [hp.Metric(name, display_name=name) for name in metric_names]
    metrics.append(hp.Metric(SCORE, display_name=(
        f"{SCORE} ({objective['name']}, {objective['direction']})")))
    with tf.summary.create_file_writer(str(root)).as_default():
        hp.hparams_config(hparams=list(params.values()), metrics=metrics)
    for trial in trials:
        tid = trial["trial"]
        with tf.summary.create_file_writer(str(root / tid)).as_default():
            values = {params[k]: _value(v) for k, v in trial["hyperparameters"].items()
                      if k in params and _value(v) is not None}
            hp.hparams(values, trial_id=tid)
            for epoch, row in epochs[tid].items():
                for name, value in row.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        tf.summary.scalar(name, float(value), step=epoch)
            if trial["score"] is not None:
                last = max(epochs[tid], default=0)
                tf.summary.scalar(SCORE, float(trial["score"]), step=last)
            tf.summary.flush()
    return Exported(root, [t["trial"] for t in trials], names, [*metric_names, SCORE])


def _prepare(root: Path, runs: list[str], overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise StoreError(f"--logdir: {root} exists and is not a directory")
    ours = [root, *(root / run for run in runs)]
    existing = [f for d in ours if d.is_dir() for f in d.glob(EVENTS_GLOB)]
    if existing and not overwrite:
        raise StoreError(f"--logdir: {root} already holds TensorBoard event files; choose"
                         " another directory or pass --overwrite to replace this job's runs")
    for f in existing:
        if f.is_dir():
            shutil.rmtree(f)
        else:
            f.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _hparam(hp: Any, name: str, domain: tuple[str, Any] | None) -> Any:
    if domain is None:  # in the trials' values but not in the space (conditional ones)
        return hp.HParam(name)
    kind, args = domain
    if kind == "int":
        return hp.HParam(name, hp.IntInterval(*args))
    if kind == "real":
        return hp.HParam(name, hp.RealInterval(*args))
    values = [_value(v) for v in args]
    if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        values = [float(v) for v in values]  # [0.1, 1]: one type, as Discrete wants
    if values and all(v is not None for v in values) and len({type(v) for v in values}) == 1:
        return hp.HParam(name, hp.Discrete(values))
    return hp.HParam(name)  # mixed types: TensorBoard's Discrete takes one type only


def _value(value: Any) -> bool | int | float | str | None:
    """A value as the HParams plugin takes it (bool, number or text)."""
    if isinstance(value, bool | int | float | str):
        return value
    return None if value is None else str(value)
