"""One trial, in-process: build the model under its strategy, fit, report every epoch.

The caller supplies a ``Reporter`` (the worker's writes to Redis, or a list in tests);
its answer after each epoch tells the trial to stop early. The run's directory keeps a
checkpoint of the last finished epoch, so a retried trial resumes after it, and the
final model (weights of the best epoch, as judged by the objective) as ``model.keras``.
With ``TrialRequest.isolated`` each attempt writes its own directory
(``<trial>/attempt-<n>-<started>/``, see ``artifacts``) and resumes from the newest readable
checkpoint of its own or an earlier attempt: an attempt that was reaped but still runs
can never overwrite the files of the attempt that replaced it.
The files go to the job's artifact store (``artifact_store``): laid out under its local
root, then moved or uploaded in one atomic step, and read back through a local copy.

Metrics are floats in memory; a non-finite value of a metric other than the loss and
the objective (those fail the trial) is written as JSON null wherever it is stored.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunecluster.artifact_store import ArtifactStore, LocalStore, open_store
from tunecluster.artifacts import CHECKPOINT, MODEL_FILE, attempt_dir, resume_dirs
from tunecluster.errors import TrialFailed
from tunecluster.models.saved import save_model
from tunecluster.spec.objective import with_objective
from tunecluster.states import OracleStatus
from tunecluster.store import codec
from tunecluster.worker import precision, xla
from tunecluster.worker.fitting import (
    TRACKED,
    fit_once,
    mean_rows,
    search_arguments,
    summarize,
)
from tunecluster.worker.runtime import JobRuntime
from tunecluster.worker.session import TrialSession
from tunecluster.worker.strategy import describe, pick_strategy

AUTO_STEPS_PER_EXECUTION = 32


class Reporter(Protocol):
    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Record one finished epoch; return True when the trial must stop."""
        ...


def agreed_stop(reporter: Reporter, epoch: int, stop: bool) -> bool:
    """The stop decision after ``epoch`` that every member of a gang trial follows:
    rank 0's (``worker/gang.py``: its reporter publishes it, the others' read it); a
    trial of one worker keeps its own."""
    decide = getattr(reporter, "decide", None)
    return stop if decide is None else bool(decide(epoch, stop))


@dataclass
class TrialRequest:
    trial_id: str
    values: dict[str, Any]
    attempt: int = 1
    # Continue from the trial's checkpoint: an earlier run of it was interrupted.
    # None means "if this is a retry" (attempt > 1).
    resume: bool | None = None
    # Write this run's files under <trial>/attempt-<n>-<started>/ (the native worker);
    # else in the trial directory itself (the Ray scheduler, tests).
    isolated: bool = False
    # When Redis started this run (the claim's ``started``, ms): names its directory.
    started: str = ""
    # Hyperband: the model file of the trial this one continues (tuner/trial_id), as the
    # parent's record names it; None: <parent trial>/model.keras.
    parent_model: str | None = None
    # A gang trial's member: only rank 0 writes the checkpoints and the model.
    rank: int = 0

    @property
    def resumes(self) -> bool:
        return self.attempt > 1 if self.resume is None else self.resume


@dataclass
class TrialResult:
    trial_id: str
    epochs: list[dict[str, float]]
    best_epoch: int
    metrics: dict[str, float]
    score: float
    stopped_early: bool
    resumed_from_epoch: int
    model_path: str
    distribution: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # The trial's HyperParameters config when build_model declared ones the job's space
    # lacked (JobRuntime.grown_space); None otherwise.
    hyperparameters: dict[str, Any] | None = None
    # How many times the model was built and trained (train.executions_per_trial; fewer
    # when the chief stopped the trial): epochs and metrics are their means.
    executions: int = 1
    # The class of each of the model's outputs, in order (the labels as the data gave
    # them, before they were encoded onto 0..k-1); empty for regression.
    classes: list[str] = field(default_factory=list)
    # What the model's first layer takes and what was done to the data before it
    # (model_input): the results document's ``input``.
    input: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# The attribute of an exception that ended a trial holding the trial's HyperParameters
# config when its code declared ones the job's space lacked (``JobRuntime.grown_space``).
GROWN_SPACE_ATTR = "tunecluster_grown_space"


def run_trial(rt: JobRuntime, request: TrialRequest, reporter: Reporter) -> TrialResult:
    import keras

    # Weights-only checkpoints do not carry optimizer slots; Keras warns on each load.
    warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
    t0 = time.perf_counter()
    spec = rt.spec
    objective, direction = spec.search.objective_name, spec.search.direction
    values = request.values
    trial_path = rt.trial_dir(request.trial_id)
    trial_dir = (attempt_dir(trial_path, request.attempt, request.started)
                 if request.isolated else trial_path)
    trial_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(rt.artifacts_dir.parent)

    epochs = int(values.get("tuner/epochs", spec.train.epochs))
    initial_epoch = int(values.get("tuner/initial_epoch", 0))
    policy = precision.policy_for(spec.train.mixed_precision)
    strategy = pick_strategy(spec.resources.strategy)
    # Drop the previous trial's state. free_memory=False skips a full gc.collect()
    # (hundreds of ms with TensorFlow loaded); the process is recycled on memory instead.
    keras.backend.clear_session(free_memory=False)
    seed = seed_trial(spec, request.trial_id)  # after clear_session, which drops Keras' seed
    t_build = time.perf_counter()
    build_at = time.time()
    hp = rt.trial_hyperparameters(values)
    past = values.get("tuner/trial_id")
    session = TrialSession(
        rt, request, reporter, strategy=strategy, epochs=epochs, initial_epoch=initial_epoch,
        tracker=lambda sink, history, checkpoints: _EpochCallback(
            sink, objective, direction, trial_dir, history, spec.train.early_stopping,
            store, request.rank == 0 and checkpoints,
            rt.fit_fn is None and rt.run_trial_fn is None, spec.search.objective_parts),
        tune=lambda model: _tune_step_overhead(model, rt, spec.train, strategy),
        resume=lambda model: _resume(model, trial_path, request, store, initial_epoch,
                                     reporter),
        # Hyperband: continue the earlier trial's best weights
        load_parent=None if past is None else lambda model: _load_parent(
            model, store, request.parent_model or str(rt.trial_dir(str(past)) / MODEL_FILE),
            past))
    try:
        with session.active():
            if rt.run_trial_fn is not None:  # a tuner's own run_trial (the drop-in ships it)
                who = f"{getattr(rt.run_trial_fn, '__qualname__', 'run_trial')}()"
                args, kwargs = search_arguments(rt, epochs)
                # the job's own callbacks: super().run_trial copies them per execution
                returned = rt.run_trial_fn(keras_tuner_trial(hp, request.trial_id), *args,
                                           **kwargs, callbacks=rt.user_callbacks())
            else:
                who = session.who

                def fit(model: Any, callbacks: list[Any], epoch_kwargs: dict[str, Any]) -> Any:
                    # the job's own callbacks first, new for each execution, as KerasTuner
                    returned = fit_once(rt, hp, model, [*rt.user_callbacks(), *callbacks],
                                        epoch_kwargs, epochs=epochs, seed=seed,
                                        strategy=strategy)
                    # Keras's own History: the epochs the tracker saw (resumed ones too)
                    return returned if rt.fit_fn is not None else TRACKED

                returned = TRACKED
                session.run(lambda: session.build(lambda: rt.build_with(hp, values)), fit,
                            spec.train.executions_per_trial)
        runs = session.outcome(returned, who)
    except Exception as exc:
        # the hyperparameters it declared before failing grow the space all the same
        # (KerasTuner's end_trial updates the space with a failed trial's too)
        with contextlib.suppress(AttributeError, TypeError):
            setattr(exc, GROWN_SPACE_ATTR, rt.grown_space(hp))
        raise
    if not any(run.rows for run in runs):
        raise TrialFailed("the trial ran no epoch")
    metrics, best_epoch = summarize(runs, objective, direction, who,
                                    spec.search.objective_parts)
    model = session.model  # None: a run_trial that trained no model (black-box)
    if session.best is not None and model is not None:  # None: best epoch before a resume
        model.set_weights(session.best[1])
    t_fit = session.fit_started or time.perf_counter()
    t_save = time.perf_counter()
    model_path = trial_dir / MODEL_FILE
    if request.rank == 0 and model is not None:  # a gang's others hold the same weights
        tmp = trial_dir / f".{MODEL_FILE}.{os.getpid()}.keras"
        # a model Keras cannot serialize (a Model subclass defined in build_model) keeps
        # its weights: it comes back rebuilt by its build_model (models/saved.py)
        save_model(model, tmp, example=None if rt.splits is None
                   else rt.splits.x_train[:1])
        store.move_in(tmp, store.key(model_path))
    return TrialResult(
        trial_id=request.trial_id,
        epochs=runs[0].rows if len(runs) == 1 else mean_rows([r.rows for r in runs]),
        best_epoch=best_epoch,
        metrics=metrics,
        score=metrics[objective],
        stopped_early=session.stopped_early,
        resumed_from_epoch=session.resumed_from,
        model_path=str(model_path) if model is not None else "",
        distribution={**describe(strategy, spec.train.batch_size), "dtype_policy": policy,
                      "steps_per_execution": int(getattr(model, "steps_per_execution", 1) or 1),
                      "jit_compile": bool(getattr(model, "jit_compile", False))},
        timings={
            "setup_s": t_build - t0,
            "build_s": t_fit - t_build,
            "fit_s": t_save - t_fit,
            "save_s": time.perf_counter() - t_save,
            # wall-clock marks, for the worker's overhead accounting around the trial
            "build_at": build_at,
            "last_epoch_at": session.last_epoch_at or time.time(),
        },
        hyperparameters=rt.grown_space(hp),
        executions=max(1, len(session.executions)),
        classes=list(rt.splits.class_names) if rt.splits is not None else [],
        input=model_input(spec, rt.splits),
    )


# What a dataset's loader (data/registry.py) does to the features before training; the
# others are given as they are (float32).
LOADER_PREPROCESSING = {
    "digits": "pixel values 0..16 divided by 16 (float32 in [0, 1]), 8x8 images:"
              " load_digits().images / 16, not .data (64 columns)",
    "mnist": "pixel values 0..255 divided by 255 (float32 in [0, 1])",
    "fashion_mnist": "pixel values 0..255 divided by 255 (float32 in [0, 1])",
}
NO_PREPROCESSING = "none: the features as the data gives them, as float32"


def model_input(spec: Any, splits: Any) -> dict[str, Any]:
    """What the trained model takes: the shape of one example, its dtype, what the data
    loader did to the features before training (apply the same to new data), what the
    model does itself, and a CSV's or Parquet file's feature columns in order."""
    if splits is None:  # a job without data: its run_trial or fit brings its own
        return {}
    if not spec.model.is_builtin:
        in_model = "whatever the module's build_model put in the model"
    elif spec.model.input == "normalize":
        in_model = ("Normalization adapted on the training split (its statistics are"
                    " weights of the model): give raw features")
    else:
        in_model = "Flatten"
    return {
        "shape": [int(n) for n in splits.input_shape],
        "dtype": str(splits.x_train.dtype),
        "preprocessing": LOADER_PREPROCESSING.get(spec.data.dataset or "", NO_PREPROCESSING),
        "in_model": in_model,
        "features": list(splits.feature_names) if splits.feature_names else None,
    }


def trial_seed(spec: Any, trial_id: str) -> int:
    """The seed of one trial of a deterministic job: the job's ``search.seed`` (else its
    split's seed) and the trial id, hashed; the same on every worker and every run."""
    base = (spec.search.seed if spec.search.seed is not None
            else spec.data.split.seed if spec.data is not None else 0)
    return zlib.crc32(f"{base}/{trial_id}".encode()) & 0x7FFFFFFF


def seed_trial(spec: Any, trial_id: str) -> int | None:
    """Under ``train.deterministic``: seed Python, NumPy, TensorFlow and Keras for this
    trial and turn TensorFlow's op determinism on; return the seed. Otherwise turn op
    determinism off (the trial process is long-lived: an earlier trial of a deterministic
    job left it on, and it is process-wide) and return None."""
    import keras
    from tensorflow.python.framework import config as tf_config  # disable is not public

    if not spec.train.deterministic:
        if tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()
        return None
    seed = trial_seed(spec, trial_id)
    keras.utils.set_random_seed(seed)
    tf_config.enable_op_determinism()
    return seed


def keras_tuner_trial(hp: Any, trial_id: str) -> Any:
    """The KerasTuner ``Trial`` a tuner's own ``run_trial`` is given."""
    from keras_tuner.engine.trial import Trial

    return Trial(hp, trial_id=trial_id, status=OracleStatus.RUNNING)


def _load_parent(model: Any, store: ArtifactStore, parent: str, past: Any) -> None:
    """Hyperband: load the best weights of the trial this one continues."""
    with store.local_copy(store.key(parent)) as path:
        if path is None:
            raise FileNotFoundError(f"the model of trial {past}, which this one"
                                    f" continues, is not at {store.url(store.key(parent))}")
        model.load_weights(path)


def _resume(model: Any, trial_path: Path, request: TrialRequest, store: ArtifactStore,
            initial_epoch: int, reporter: Reporter,
            ) -> tuple[list[dict[str, float]], int] | None:
    """An interrupted trial's newest readable checkpoint past ``initial_epoch``, loaded
    into ``model`` and its epochs reported again (idempotent: the chief keeps one record
    per epoch): ``(history, epoch to start from)``; None when there is none."""
    dirs = (resume_dirs(trial_path, request.attempt, _run_dirs(trial_path, store))
            if request.isolated else [trial_path])
    checkpoint = next(filter(None, (read_checkpoint(d, store) for d in dirs)), None)
    if checkpoint is None or checkpoint[0]["epoch"] <= initial_epoch:
        return None
    meta, weights = checkpoint
    model.set_weights(weights)
    history = [{"epoch": int(row["epoch"]), **_metrics_only(row)} for row in meta["history"]]
    for row in history:
        reporter.epoch(int(row["epoch"]), _metrics_only(row))
    return history, int(meta["epoch"])


def _run_dirs(trial_path: Path, store: ArtifactStore) -> set[str]:
    """The names of the directories in ``trial_path`` that hold a file in ``store``."""
    prefix = store.key(trial_path)
    return {key[len(prefix) + 1:].split("/", 1)[0] for key in store.list(prefix)
            if key.startswith(prefix + "/") and "/" in key[len(prefix) + 1:]}


def _tune_step_overhead(model: Any, rt: JobRuntime, train: Any, strategy: Any) -> None:
    """Small models are bound by per-step dispatch: run several steps per call.

    Applied after ``compile`` so it works for users' own models too; a model whose
    author already chose ``steps_per_execution`` keeps it under ``auto``. Under several
    replicas ``auto`` stays at 1: Keras 3 fails multi-step execution under
    MirroredStrategy ("You must feed a value for placeholder tensor", keras#19246).
    XLA follows ``train.jit_compile`` (``worker/xla.py``).
    """
    xla.apply(model, train.jit_compile, strategy, keep_model_choice=rt.build_fn is not None)
    steps = train.steps_per_execution
    if steps == "auto":
        if int(getattr(model, "steps_per_execution", 1) or 1) != 1:
            return
        if int(strategy.num_replicas_in_sync) > 1 or rt.splits is None:
            steps = 1  # no data here: the user's own code brings it
        else:
            steps_per_epoch = max(1, math.ceil(len(rt.splits.x_train) / train.batch_size))
            steps = min(steps_per_epoch, AUTO_STEPS_PER_EXECUTION)
    model.steps_per_execution = int(steps)


class _EpochCallback:
    """Reports epochs, checkpoints the last one, tracks the best weights, stops early."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        import keras

        class Callback(keras.callbacks.Callback):
            def __init__(self, reporter: Reporter, objective: str, direction: str,
                         trial_dir: Path, history: list[dict[str, float]],
                         early_stopping: Any, store: ArtifactStore,
                         writes_files: bool = True, needs_objective: bool = True,
                         parts: list[tuple[str, str]] | None = None) -> None:
                super().__init__()
                self.writes_files = writes_files
                # False under the user's own fit or run_trial, whose returned metrics may
                # hold the objective where the epochs' logs do not (KerasTuner's way)
                self.needs_objective = needs_objective
                self.parts = parts  # a multi-objective's: its value is computed here
                self.reporter = reporter
                self.objective = objective
                self.sign = 1.0 if direction == "max" else -1.0
                self.trial_dir = trial_dir
                self.store = store
                self.history = history
                self.patience = early_stopping.patience if early_stopping else None
                self.min_delta = early_stopping.min_delta if early_stopping else 0.0
                self.best_value = max((self.sign * r[objective] for r in history
                                       if objective in r), default=None)
                # Patience counts from the last improvement by more than min_delta; the
                # saved weights are those of the best epoch, as the result reports it.
                self.reference = self.best_value
                self.best_weights: list[Any] | None = None
                self.since_best = 0
                self.stop_reason: str | None = None
                self.last_epoch_at: float | None = None

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                logs = with_objective({k: float(v) for k, v in (logs or {}).items()},
                                      self.objective, self.parts)
                number = epoch + 1
                if self.objective not in logs and self.needs_objective:
                    raise TrialFailed(
                        f"objective {self.objective!r} is not reported by the model;"
                        f" it reports: {', '.join(sorted(logs)) or 'nothing'}"
                    )
                bad = [k for k in ("loss", self.objective)
                       if k in logs and not math.isfinite(logs[k])]
                if bad:
                    raise TrialFailed(f"{bad[0]} is {logs[bad[0]]} at epoch {number}")
                weights = self.model.get_weights()
                if self.objective in logs:
                    value = self.sign * logs[self.objective]
                    if self.best_value is None or value > self.best_value:
                        self.best_value = value
                        self.best_weights = weights
                    if self.reference is None or value > self.reference + self.min_delta:
                        self.reference = value
                        self.since_best = 0
                    else:
                        self.since_best += 1
                row = {"epoch": number, **logs}
                self.history.append(row)
                if self.writes_files:
                    write_checkpoint(self.trial_dir, weights,
                                     {"epoch": number, "history": self.history}, self.store)
                stop = self.reporter.epoch(number, logs)
                self.last_epoch_at = time.time()
                reason = None
                if stop:
                    reason = "stopped by the chief"
                elif (self.patience is not None
                      and self.since_best >= max(self.patience, 1)):  # as Keras counts
                    reason = f"no improvement in {self.patience} epochs"
                if agreed_stop(self.reporter, number, reason is not None):
                    self.stop_reason = reason or "stopped by the gang's rank 0"
                    self.model.stop_training = True

        return Callback(*args, **kwargs)


def write_checkpoint(trial_dir: Path, weights: list[Any], meta: dict[str, Any],
                     store: ArtifactStore | None = None) -> None:
    """Weights and their epoch in one file, replaced atomically in ``store`` (default:
    the directory itself): a worker killed while writing leaves the previous checkpoint
    intact. (npz of ``get_weights()`` costs a few ms per epoch where ``save_weights``
    to h5 costs tens.)"""
    import numpy as np

    store = store or LocalStore(trial_dir)
    tmp = trial_dir / f".{CHECKPOINT}.{os.getpid()}.npz"
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(weights)}
    meta = codec.finite(meta)  # non-finite side metrics: null, as in Redis
    np.savez(tmp, meta=np.asarray(json.dumps(meta, allow_nan=False)), **arrays)
    store.move_in(tmp, store.key(trial_dir / CHECKPOINT))


def read_checkpoint(trial_dir: Path, store: ArtifactStore | None = None,
                    ) -> tuple[dict[str, Any], list[Any]] | None:
    """``(meta, weights)`` of the last checkpoint in ``store`` (default: the directory
    itself), or None if absent or unreadable."""
    import numpy as np

    store = store or LocalStore(trial_dir)
    try:
        with store.local_copy(store.key(trial_dir / CHECKPOINT)) as path:
            if path is None:
                return None
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                weights = [data[f"w{i}"] for i in range(len(data.files) - 1)]
    except (OSError, ValueError, KeyError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("epoch"), int):
        return None
    return meta, weights


def _metrics_only(row: Mapping[str, float | None]) -> dict[str, float]:
    """The metrics of a history row as floats (null, a non-finite value: NaN)."""
    return {k: math.nan if v is None else float(v) for k, v in row.items() if k != "epoch"}
