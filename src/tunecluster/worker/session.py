"""One trial's training on a worker: the models it builds and the executions it runs.

``run_trial`` (``worker/trial.py``) opens a ``TrialSession`` per trial. Every model of the
trial is built through ``build`` (under the strategy's scope, its step overhead tuned, a
Hyperband trial's parent weights loaded) and every execution runs through ``execute``
(a resumed checkpoint, the epoch reporter as a Keras callback, the best weights kept
across executions). The job's own path calls ``run``; a tuner's own ``run_trial``
(KerasTuner's ``Tuner.run_trial`` on the cluster, ``api/keras_tuner.py``) reaches the same
session through ``current()``, so its ``super().run_trial`` and its ``self.hypermodel``
train exactly as a job without one does.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import Any

from tunecluster.errors import TrialFailed
from tunecluster.worker.fitting import (
    TRACKED,
    Execution,
    MeanReporter,
    mean_rows,
    report_rows,
    untracked_rows,
)

_CURRENT: contextvars.ContextVar[TrialSession | None] = contextvars.ContextVar(
    "tunecluster_trial_session", default=None)


def current() -> TrialSession | None:
    """The session of the trial this process trains now; None outside a trial."""
    return _CURRENT.get()


class TrialSession:
    def __init__(self, rt: Any, request: Any, reporter: Any, *, strategy: Any, epochs: int,
                 initial_epoch: int, tracker: Callable[..., Any],
                 tune: Callable[[Any], None], resume: Callable[..., Any],
                 load_parent: Callable[[Any], None] | None) -> None:
        self.rt, self.request, self.reporter = rt, request, reporter
        self.strategy, self.epochs, self.initial_epoch = strategy, epochs, initial_epoch
        self._tracker, self._tune, self._resume, self._load_parent = (
            tracker, tune, resume, load_parent)
        spec = rt.spec
        self.objective, self.direction = spec.search.objective_name, spec.search.direction
        self.parts = spec.search.objective_parts
        self.hyperband = "tuner/epochs" in request.values
        self.executions: list[Execution] = []
        self.model: Any = None
        self.best: tuple[float, list[Any]] | None = None  # best epoch's weights, any execution
        self.resumed_from = 0
        self.stopped_early = False
        self.stopped = False  # by the chief or the gang's rank 0: no more executions
        self.last_epoch_at: float | None = None
        self.fit_started: float | None = None
        # what errors call the fit: the function's own name (the drop-in's says
        # HyperModel.fit, as KerasTuner's errors do)
        self.who = (f"{getattr(rt.fit_fn, '__qualname__', spec.model.fit)}()"
                    if rt.fit_fn is not None else "model.fit()")
        self._planned = 1
        self._results: list[Any] | None = None
        # metrics a run_trial reported through self.oracle.update_trial (KerasTuner's
        # older way, still honoured there): (metrics, step)
        self.updates: list[tuple[dict[str, float], int]] = []

    @contextlib.contextmanager
    def active(self) -> Iterator[TrialSession]:
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    # --- what a tuner's own run_trial calls ----------------------------------------------

    def build(self, make: Callable[[], Any]) -> Any:
        """A model of the trial: ``make()`` (a checked build) under the strategy's scope,
        its step overhead tuned, a Hyperband trial's parent weights loaded. The session
        keeps the last one: the trial's model."""
        with self.strategy.scope():
            model = make()
            if (not model.weights and not type(model).__module__.startswith("keras.")
                    and self.rt.splits is not None):
                # a Model subclass of the user's builds its variables when first called:
                # now, so a resume, a Hyperband parent's weights and checkpoints find them
                model.build((None, *self.rt.splits.x_train.shape[1:]))
            self._tune(model)
        limit = self.rt.spec.train.max_model_size
        if limit is not None and model.built and model.count_params() > limit:  # KT's check
            raise TrialFailed(f"Oversized model: {model.count_params()} parameters, over"
                              f" max_model_size {limit}")
        if self._load_parent is not None:
            self._load_parent(model)
        self.model = model
        return model

    def run(self, build: Callable[[], Any] | None,
            fit: Callable[[Any, list[Any], dict[str, Any]], Any], count: int) -> list[Any]:
        """``count`` executions (KerasTuner's executions_per_trial), each a model from
        ``build()`` trained by ``fit(model, callbacks, epoch_kwargs)``; what each fit
        returned, in a list the session recognizes when it comes back from run_trial."""
        self._planned = count
        results: list[Any] = []
        for _ in range(count):
            results.append(self.execute(build, fit))
            if self.stopped:
                break
        self._results = results
        return results

    def execute(self, build: Callable[[], Any] | None,
                fit: Callable[[Any, list[Any], dict[str, Any]], Any]) -> Any:
        """One execution: build, resume (only a trial of one execution resumes: the
        others' checkpoints are not kept), fit with the epoch reporter, keep the best.
        ``build`` None: ``fit`` builds the model itself (through ``build``), unresumed."""
        model = build() if build is not None else None
        first = not self.executions
        history: list[dict[str, float]] = []
        start = self.initial_epoch
        if model is not None and first and self._planned == 1 and self.request.resumes:
            resumed = self._resume(model)
            if resumed is not None:
                history, start = resumed
                self.resumed_from = start
        sink = (self.reporter if first
                else MeanReporter(self.reporter, [e.rows for e in self.executions]))
        tracker = self._tracker(sink, history, self._planned == 1)
        returned: Any = TRACKED
        if start < self.epochs:
            kwargs: dict[str, Any] = {}
            if self.hyperband:  # KerasTuner's Hyperband sets both for every trial
                kwargs["epochs"] = self.epochs
            if self.hyperband or start:
                kwargs["initial_epoch"] = start
            self.fit_started = self.fit_started or time.perf_counter()
            returned = fit(model, [tracker], kwargs)
        self._record(history, returned, sink)
        self.stopped_early = self.stopped_early or tracker.stop_reason is not None
        self.last_epoch_at = tracker.last_epoch_at or self.last_epoch_at
        if tracker.best_weights is not None and (self.best is None
                                                 or tracker.best_value > self.best[0]):
            self.best = (tracker.best_value, tracker.best_weights)
        self.stopped = (tracker.stop_reason or "").startswith("stopped by")
        return returned

    # --- the trial's outcome --------------------------------------------------------------

    def outcome(self, returned: Any, who: str) -> list[Execution]:
        """The executions the trial's metrics come from: the session's own when the
        trial returned what ``run`` gave (or nothing of its own: the job's path), else
        what a tuner's own run_trial returned over the epochs the session saw."""
        if returned is TRACKED or (self._results is not None and returned is self._results):
            return self.executions
        if returned is None and self.updates:  # reported through self.oracle.update_trial
            rows = [{"epoch": step + 1, **metrics} for metrics, step in self.updates]
            report_rows(self.reporter, rows)
            return [Execution(rows, TRACKED)]
        rows = (self.executions[0].rows if len(self.executions) == 1
                else mean_rows([e.rows for e in self.executions]))
        if not rows:  # nothing went through the epoch reporter: report what it returned
            rows = untracked_rows(returned, self.objective, self.direction, who, self.parts)
            report_rows(self.reporter, rows)
        return [Execution(rows, returned)]

    def _record(self, history: list[dict[str, float]], returned: Any, sink: Any) -> None:
        if not history and returned is not TRACKED:
            # a fit of the user's own that passed no callbacks on: what it returned
            history.extend(untracked_rows(returned, self.objective, self.direction, self.who,
                                          self.parts))
            report_rows(sink, history)
        self.executions.append(Execution(list(history), returned))
