"""A drop-in tuner on a worker: its class's own ``run_trial`` runs there, as KerasTuner's
distributed mode runs a tuner on each of its workers.

The drop-in ships the tuner's class and its own attributes with the hypermodel
(``shipping.py``); the worker's trial calls its ``run_trial(trial, x, y, **kwargs)``. There
``self.hypermodel`` builds through the trial's session (``worker/session.py``: strategy
scope, a Hyperband parent's weights, the model the trial keeps) and ``super().run_trial``
is KerasTuner's: ``executions_per_trial`` executions, each a fresh model trained by
``self.hypermodel.fit`` with the search's callbacks copied and the worker's epoch
reporter added, returning the executions' results for the worker to average.
Called by hand, outside a search (``tuner.run_trial(tuner.oracle.create_trial(...), x,
y)``), it runs in the calling process as KerasTuner's does: the executions' results.
"""

from __future__ import annotations

import copy
from typing import Any

from keras_tuner import HyperModel, Objective

from tunecluster.states import OracleStatus


def run_trial(tuner: Any, trial: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """KerasTuner's ``Tuner.run_trial`` on the trial's session."""
    from tunecluster.worker.session import current

    session = current()
    callbacks = list(kwargs.pop("callbacks", None) or [])
    count = int(getattr(tuner, "executions_per_trial", 1))
    if session is None:  # called by hand, as KerasTuner's users may: here, as it runs it
        return [tuner._build_and_fit_model(trial, *args, **kwargs,
                                           callbacks=copy.deepcopy(callbacks))
                for _ in range(count)]
    hp = trial.hyperparameters

    def each(reporters: list[Any], epoch_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**kwargs, **epoch_kwargs,
                "callbacks": [*copy.deepcopy(callbacks), *reporters]}  # per execution

    if any("_build_and_fit_model" in vars(c) for c in own_classes(type(tuner))):
        # the user's own (AutoKeras's hook) builds and fits: it gets no resumed weights
        return session.run(None, lambda _model, reporters, epoch_kwargs:
                           tuner._build_and_fit_model(trial, *args,
                                                      **each(reporters, epoch_kwargs)),
                           count)
    return session.run(lambda: tuner.hypermodel.build(hp),
                       lambda model, reporters, epoch_kwargs: tuner.hypermodel.fit(
                           hp, model, *args, **each(reporters, epoch_kwargs)), count)


def build_and_fit_model(tuner: Any, trial: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
    """KerasTuner's ``Tuner._build_and_fit_model``: build by the hypermodel, fit by it
    (in the searching process, the tuner's compile overrides applied here; on a worker,
    ``WorkerHyperModel`` applies them)."""
    from tunecluster.worker.session import current

    hp = trial.hyperparameters
    model = tuner.hypermodel.build(hp)
    overrides = getattr(tuner, "_compile", None)
    if overrides and current() is None:
        model = override_compile(model, overrides)
    return tuner.hypermodel.fit(hp, model, *args, **kwargs)


class WorkerHyperModel(HyperModel):
    """``self.hypermodel`` of a tuner on a worker: the user's hypermodel (a ``HyperModel``
    or a ``build_model`` function, which KerasTuner wraps alike) whose models are built
    through the trial's session, so the trial keeps the model its ``run_trial`` trained."""

    def __init__(self, hypermodel: Any, build: Any) -> None:
        super().__init__()
        self.user = hypermodel
        self.user_build = build  # the shipped build(hp): the compile overrides applied
        self.name = getattr(hypermodel, "name", None)

    def build(self, hp: Any) -> Any:
        from tunecluster.models.custom import build_checked
        from tunecluster.worker.session import current

        build = self.user_build
        name = getattr(self.user, "__name__", type(self.user).__name__ + ".build")
        session = current()
        if session is None:
            return build_checked(build, hp, name, compiled=False)
        return session.build(lambda: build_checked(build, hp, name, compiled=False))

    def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self.user, HyperModel):
            return self.user.fit(hp, model, *args, **kwargs)
        return model.fit(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # the user's own attributes and methods
        if name in ("user", "user_build"):
            raise AttributeError(name)
        return getattr(self.user, name)


def override_compile(model: Any, overrides: dict[str, Any]) -> Any:
    """KerasTuner's ``Tuner(optimizer=, loss=, metrics=)``: the built model compiled again
    with these in place of its own (Keras's serialized configs)."""
    config = model.get_compile_config() or {}
    model.compile_from_config({**config, **overrides})
    return model


def compiled_with(build: Any, overrides: dict[str, Any]) -> Any:
    """``build`` whose models are compiled again with ``overrides``."""
    def build_model(hp: Any) -> Any:
        return override_compile(build(hp), overrides)

    return build_model


class WorkerOracle:
    """``self.oracle`` of a tuner on a worker: the objective, and ``update_trial``, through
    which an older run_trial reports its metrics (KerasTuner still honours it, with a
    deprecation warning, when run_trial then returns None)."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective

    def update_trial(self, trial_id: str, metrics: dict[str, Any], step: int = 0) -> str:
        from tunecluster.worker.session import current

        session = current()
        if session is not None:
            session.updates.append(({str(k): float(v) for k, v in metrics.items()},
                                    int(step)))
        return OracleStatus.RUNNING

    @property
    def start_order(self) -> list[str]:
        """KerasTuner's ids of the trials started so far, in order, this one last: the
        ids the chief made up to this trial's (KerasTuner numbers its trials as it makes
        them), which is what a run_trial on one machine sees. A trial id that is not a
        number (a warm start's) stands alone."""
        from tunecluster.worker.session import current

        session = current()
        trial = str(session.request.trial_id) if session is not None else ""
        if not trial.isdigit():
            return [trial] if trial else []
        return [str(i).zfill(len(trial)) for i in range(int(trial) + 1)]


def on_worker(tuner: Any, hypermodel: Any, build: Any, executions_per_trial: int,
              objective: tuple[str, str]) -> None:
    """What a shipped tuner holds on a worker besides its own attributes."""
    tuner.hypermodel = None if build is None else WorkerHyperModel(hypermodel, build)
    tuner.executions_per_trial = executions_per_trial
    tuner.objective = Objective(*objective)
    tuner.oracle = WorkerOracle(tuner.objective)


# What the drop-in's tuners hold themselves; a subclass's other attributes are its own
# and travel with its run_trial (user_attributes).
CLUSTER_ATTRIBUTES = frozenset({
    "hypermodel", "_user_hypermodel", "algorithm", "objective", "max_trials", "seed",
    "hyperparameters",
    "tune_new_entries", "allow_new_entries", "max_retries_per_trial",
    "max_consecutive_failed_trials", "executions_per_trial", "directory", "project_name",
    "overwrite", "cluster_url", "workers", "workers_per_trial", "job", "oracle", "_space",
    "_results", "_artifacts", "_source", "_function", "_fit", "_search_settings",
    "_max_epochs", "optimizer", "loss", "metrics", "_compile", "max_model_size",
    "_tensorboard", "_callbacks"})
# KerasTuner's hooks that its own run_trial and callbacks call, which the cluster's do not
_HOOKS = ("on_epoch_begin", "on_epoch_end", "on_batch_begin", "on_batch_end",
          "on_trial_begin", "on_trial_end", "on_search_begin", "on_search_end",
          "save_model")


def own_classes(tuner: type) -> list[type]:
    """The classes of a drop-in tuner's MRO that its user wrote."""
    from tunecluster.api.keras_tuner import Tuner

    return [c for c in tuner.__mro__
            if issubclass(c, Tuner) and not c.__module__.startswith("tunecluster.")]


def own_run_trial(tuner: type) -> bool:
    """Whether the tuner's class has trial code of its own (``run_trial``, or AutoKeras's
    ``_build_and_fit_model``): then the class travels and runs on the workers."""
    return any(name in vars(c) for c in own_classes(tuner)
               for name in ("run_trial", "_build_and_fit_model"))


def refuse_what_would_be_ignored(tuner: type) -> None:
    """The user's code that trials would not run: refused in one line, never ignored
    (a search that trains without it gives wrong results and no error)."""
    hooks = sorted({h for c in own_classes(tuner) for h in _HOOKS if h in vars(c)})
    if hooks:
        raise NotImplementedError(
            f"{tuner.__name__}.{hooks[0]}: a tuner's own {', '.join(hooks)} do not run on"
            " the cluster (its run_trial does); move the logic into run_trial, or use"
            " keras_tuner for this search")
