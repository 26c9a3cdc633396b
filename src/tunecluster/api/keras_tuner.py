"""KerasTuner's tuners, run on a tunecluster cluster: change one import, keep the code.

    import tunecluster.keras_tuner as kt      # instead of: import keras_tuner as kt

    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=20)
    tuner.search(X_train, y_train, epochs=10, validation_data=(X_valid, y_valid))
    best_model = tuner.get_best_models(1)[0]

A search becomes one cluster job: the hypermodel travels as source (``shipping.py``),
the arrays as npz files (``allow_pickle=False``), the oracle runs on the chief.
``cluster=``: a Redis URL; default ``$TUNECLUSTER_REDIS_URL``, else the local cluster of
``tunecluster up`` when one runs, else an embedded local cluster (Redis, a chief,
``workers`` workers) started for the search and stopped after; it keeps its Redis data
in ``directory/project_name/cluster``, so a tuner re-created with ``overwrite=False``
reattaches to the project's search there too.
The test split of the job is the validation data (the search never sees a test set).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keras_tuner import HyperModel, HyperParameters, Objective

from tunecluster import defaults
from tunecluster.api import progress, tensorboard, tuner_on_worker
from tunecluster.api import tuner_inputs as inputs
from tunecluster.api import tuner_project as project
from tunecluster.api import tuner_summaries as summaries
from tunecluster.api.client import Client, Job
from tunecluster.api.shipping import ship
from tunecluster.api.tuner_errors import BuildReturnedNoModel, search_ended
from tunecluster.api.tuner_oracle import cluster_oracle
from tunecluster.errors import SpecError, TuneclusterError
from tunecluster.states import JobState

__all__ = ["HyperModel", "HyperParameters", "Objective", "Tuner"]

_FINAL = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


class Tuner:
    """KerasTuner's ``Tuner`` on the cluster: ``Tuner(oracle, hypermodel, ...)`` with one of
    KerasTuner's oracle objects (its configuration becomes the job's search settings;
    the chief hosts the same oracle), or one of the four tuners built on it."""

    def __init__(self, oracle: Any = None, hypermodel: Any = None, *,
                 directory: str | None = None, project_name: str | None = None,
                 overwrite: bool = False, executions_per_trial: int = 1,
                 optimizer: Any = None, loss: Any = None, metrics: Any = None,
                 max_model_size: int | None = None, cluster: str | None = None,
                 workers: int = 2, workers_per_trial: int = 1,
                 **unsupported: Any) -> None:
        if unsupported:
            raise TypeError(f"{type(self).__name__}: not supported on a cluster:"
                            f" {', '.join(sorted(unsupported))}")
        tuner_on_worker.refuse_what_would_be_ignored(type(self))
        if hypermodel is None and not tuner_on_worker.own_run_trial(type(self)):
            # as KerasTuner: only a run_trial of the user's own may go without one
            raise ValueError(f"{type(self).__name__}: Received `hypermodel=None`: give a"
                             " build_model(hp) function or a HyperModel, or define the"
                             " search in your Tuner subclass's run_trial")
        settings = inputs.oracle_settings(oracle)
        # what travels (the user's own function or HyperModel); self.hypermodel is it as
        # KerasTuner holds it (a function wrapped in its DefaultHyperModel)
        self._user_hypermodel = hypermodel
        self.hypermodel = None if hypermodel is None else inputs.kerastuner_hypermodel(hypermodel)
        self.algorithm: str = settings["algorithm"]
        self.objective = inputs.objective(
            settings["objective"],
            tuner_on_worker.own_run_trial(type(self)) or inputs.own_fit(hypermodel))
        self.max_trials = settings["max_trials"]
        self.seed = settings["seed"]
        self.hyperparameters = settings["hyperparameters"]
        self.tune_new_entries = settings["tune_new_entries"]
        self.allow_new_entries = settings["allow_new_entries"]
        self.max_retries_per_trial = settings["max_retries_per_trial"]
        self.max_consecutive_failed_trials = settings["max_consecutive_failed_trials"]
        self._search_settings = settings["extra"]
        self._max_epochs = settings.get("max_epochs")  # Hyperband: search(epochs=) unused
        self.executions_per_trial = executions_per_trial
        self.max_model_size = max_model_size
        self.directory = directory or "."
        self.project_name = project_name or "untitled_project"
        self.overwrite = overwrite
        self.cluster_url = (cluster or os.environ.get(defaults.REDIS_URL_ENV)
                            or _up_cluster_url())
        self.workers = workers
        # each trial trained by this many workers at once (resources.workers_per_trial)
        self.workers_per_trial = workers_per_trial
        self.job: Job | None = None
        self.oracle = cluster_oracle(oracle, self)
        self._space: dict[str, Any] | None = None
        self._results: dict[str, Any] | None = None
        self._artifacts: Path | None = None
        self._tensorboard: list[str] = []  # TensorBoard callbacks' log_dir: written at the end
        self._callbacks: list[Any] = []  # the search's other callbacks: run on the workers
        self.optimizer, self.loss, self.metrics = optimizer, loss, metrics
        self._compile = inputs.compile_overrides(optimizer, loss, metrics)
        # fails early, in the constructor; _fit: the name of a HyperModel's own fit;
        # no hypermodel (a black-box run_trial): no build function
        self._source, self._function, self._fit = ship(
            hypermodel, compile_overrides=self._compile)[:3] if hypermodel is not None else (
            "", None, None)
        if overwrite:
            project.project_file(self.directory, self.project_name).unlink(missing_ok=True)
            # the embedded cluster's data of an earlier search of this project
            shutil.rmtree(Path(self.directory, self.project_name, "cluster"),
                          ignore_errors=True)
        else:  # KerasTuner's reload: the project's job (by the same tuner class)
            previous = project.read_project(self.directory, self.project_name, type(self).__name__)
            if previous is not None and self.cluster_url is not None:
                self.job = Client(self.cluster_url).job(previous)
                self.oracle.mark_stale()

    # --- search -----------------------------------------------------------------------

    def search(self, x: Any = None, y: Any = None, *, validation_data: Any = None,
               validation_split: float | None = None, epochs: int | None = None,
               batch_size: int | None = None, callbacks: Sequence[Any] | None = None,
               verbose: int | None = None, shuffle: bool | None = None,
               **fit_kwargs: Any) -> None:
        """Run the search on the cluster and block until it ends (KerasTuner's meaning).

        A ``HyperModel``'s own ``fit`` is given, besides ``x``, ``y`` and ``callbacks``,
        the arguments given here (as KerasTuner gives them; ``validation_split`` reaches
        it as ``validation_data``, the rows Keras would have split off).
        Ctrl-C cancels the job on the cluster (and stops an embedded one) before the
        ``KeyboardInterrupt`` goes on."""
        given = {"validation_data": validation_data is not None or bool(validation_split),
                 "epochs": epochs is not None, "batch_size": batch_size is not None,
                 "shuffle": shuffle is not None, "verbose": verbose is not None}
        spec, files = self._job_spec(x, y, validation_data, validation_split,
                                     1 if epochs is None else epochs,
                                     32 if batch_size is None else batch_size, callbacks,
                                     True if shuffle is None else shuffle, fit_kwargs,
                                     [name for name, was in given.items() if was])
        verbose = 1 if verbose is None else verbose
        space = self._discover_space()
        if self.cluster_url is not None:
            client = Client(self.cluster_url)
            if self.job is not None and client.store.jobs.exists(self.job.id):
                self._continue(Job(client, self.job.id), files, verbose)
            else:
                self._run(client, spec, files, space, verbose)
            return
        from tunecluster.cluster import LocalCluster

        # The embedded cluster keeps its Redis data in the project's directory, where
        # KerasTuner keeps its oracle: a tuner re-created with overwrite=False starts it
        # again on that data and reattaches to the project's job.
        home = Path(self.directory, self.project_name).resolve()
        self._artifacts = home / "artifacts"
        if verbose:
            print(f"Starting an embedded cluster ({self.workers} workers)...", flush=True)
        with LocalCluster(workers=self.workers, artifacts=self._artifacts,
                          redis_dir=home / "cluster") as local:
            client = Client(local.url, artifacts=self._artifacts)
            previous = None if self.overwrite else project.read_project(
                self.directory, self.project_name, type(self).__name__)
            if previous is not None and client.store.jobs.exists(previous):
                self._continue(Job(client, previous), files, verbose)
            else:
                self._run(client, spec, files, space, verbose)

    def _run(self, client: Client, spec: dict[str, Any], files: dict[str, bytes],
             space: dict[str, Any], verbose: int) -> None:
        from tunecluster.spec import parse_spec

        self.job = client.submit(parse_spec(spec), files=files, space=space)
        if self._artifacts is None:
            self._artifacts = client.artifacts
        project.write_project(self.directory, self.project_name, self.job.id, type(self).__name__)
        self._wait(verbose)

    def _continue(self, job: Job, files: dict[str, bytes], verbose: int) -> None:
        """Reattach to this project's job: follow it if it runs, else resume it up to
        ``max_trials`` (with the data given again); one that ran as many trials already
        is only reloaded, as KerasTuner does."""
        record = job.record()  # read now: an embedded cluster is gone after the search
        self.job, self._results = job, None
        self._space = record.space  # the job's, as KerasTuner's reloaded oracle
        if self._artifacts is None:
            self._artifacts = job.client.artifacts
        after = "0-0"
        if job.state in _FINAL:
            ran = len(job.results()["trials"])
            if not self.max_trials or self.max_trials <= ran:
                if verbose:
                    print(f"Reloading search {job.id}: {ran} trial(s) ran, max_trials"
                          f" {self.max_trials}", flush=True)
                self._results = job.results()
                self.oracle.sync()
                return
            job.resume(self.max_trials, files=files)
            after = job.resumed_after or after
            if verbose:
                print(f"Resuming search {job.id}: {ran} trial(s) ran, up to"
                      f" {self.max_trials}", flush=True)
        self._wait(verbose, after)

    def _wait(self, verbose: int, after: str = "0-0") -> None:
        assert self.job is not None
        try:
            self._follow(verbose, after)
            self._results = self.job.results()
            self.oracle.learn_space()  # while the cluster is there (an embedded one goes)
            for logdir in self._tensorboard:  # the trials, as TensorBoard callbacks asked
                tensorboard.export(self.job.client.store, self.job.id, logdir, overwrite=True)
        except KeyboardInterrupt:
            self.job.cancel()
            try:
                self._results = self.job.wait(timeout=60, raise_on_failure=False)
            finally:
                if verbose:
                    print(f"\nSearch interrupted: job {self.job.id} cancelled", flush=True)
            raise
        if self._results["state"] != JobState.COMPLETED:
            raise search_ended(self.job.id, self._results)

    def _follow(self, verbose: int, after: str = "0-0") -> None:
        assert self.job is not None
        view = progress.view_for(verbose, self.max_trials)
        progress.follow(self.job, view, after, space_size=self._space_size(),
                        objective=self.objective.name, direction=self.objective.direction)

    def _space_size(self) -> int:
        return len((self._space or {}).get("space", []))

    # --- the job ------------------------------------------------------------------------

    def _job_spec(self, x: Any, y: Any, validation_data: Any, validation_split: float | None,
                  epochs: int, batch_size: int, callbacks: Sequence[Any] | None,
                  shuffle: bool, fit_kwargs: dict[str, Any], given: Sequence[str] = (),
                  ) -> tuple[dict[str, Any], dict[str, bytes]]:
        fit_kwargs = dict(fit_kwargs)
        class_weight = fit_kwargs.pop("class_weight", None)
        sample_weight = fit_kwargs.pop("sample_weight", None)
        if fit_kwargs:
            names = ", ".join(sorted(fit_kwargs))
            raise SpecError("search", f"not supported on a cluster: {names}")
        given = [*given, *(["class_weight"] if class_weight is not None else []),
                 *(["sample_weight"] if sample_weight is not None else [])]
        early = inputs.early_stopping(callbacks, self.objective.name)
        self._tensorboard = inputs.tensorboard_dirs(callbacks)
        self._callbacks = inputs.worker_callbacks(callbacks)  # the others: shipped as code
        if x is None and y is None and validation_data is None:
            # KerasTuner's search() without data: the user's own run_trial or fit (or the
            # model's own fit: HyperModel.fit's model.fit(**kwargs)) brings its own
            return self._spec_of({}, None, None, epochs, batch_size, shuffle, early,
                                 class_weight, given)
        train, valid, batch = inputs.train_and_valid(x, y, validation_data, validation_split,
                                                     sample_weight)
        if batch is not None and "batch_size" not in given:
            # a dataset's batches: Keras trains on them as they are, so the workers train
            # on batches of that size (and a fit of the user's own is given it)
            batch_size, given = batch, [*given, "batch_size"]
        files = {"train.npz": inputs.npz(*train), "valid.npz": inputs.npz(*valid)}
        data = {"files": {"train": "train.npz", "valid": "valid.npz", "test": "valid.npz"}}
        return self._spec_of(files, data, inputs.task(train[1], valid[1]), epochs,
                             batch_size, shuffle, early, class_weight, given)

    def _spec_of(self, files: dict[str, bytes], data: dict[str, Any] | None,
                 task: str | None, epochs: int, batch_size: int, shuffle: bool,
                 early: dict[str, Any] | None, class_weight: Any,
                 given: Sequence[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
        model: dict[str, Any] = {"module": "hypermodel.py", "source": self._source,
                                 "function": self._function,
                                 "tune_new_entries": self.tune_new_entries}
        own = tuner_on_worker.own_run_trial(type(self))
        if own or self._callbacks:  # shipped now: with its attributes, with the callbacks
            on_worker = (f", {self.executions_per_trial!r},"  # the tuner's, on a worker
                         f" {(self.objective.name, self.objective.direction)!r}") if own else ""
            shipped = ship(self._user_hypermodel, self if own else None, on_worker,
                           self._compile, self._callbacks)
            model.update(source=shipped.source, run_trial=shipped.run_trial,
                         callbacks=shipped.callbacks)
        if own:
            model["fit_kwargs"] = list(given)
        elif self._fit is not None:  # the HyperModel's own fit, given what search() was
            model.update(fit=self._fit, fit_kwargs=list(given))
        elif data is None:  # no data for Keras's fit on the workers: HyperModel.fit's own
            model.update(source=model["source"] + inputs.KERAS_FIT, fit="_tc_keras_fit",
                         fit_kwargs=list(given))
        if task:
            model["task"] = task
        search: dict[str, Any] = {
            "algorithm": self.algorithm,
            "objective": inputs.objective_spec(self.objective),
            "max_trials": self.max_trials or 10_000,
            "max_retries_per_trial": self.max_retries_per_trial,
            "max_consecutive_failed_trials": self.max_consecutive_failed_trials,
            **({"seed": self.seed} if self.seed is not None else {}),
            **self._search_extra(),
        }
        train: dict[str, Any] = {"epochs": self._epochs(epochs), "batch_size": batch_size,
                                 "shuffle": shuffle,
                                 "executions_per_trial": self.executions_per_trial,
                                 **({"max_model_size": self.max_model_size}
                                    if self.max_model_size else {})}
        if early:
            train["early_stopping"] = early
        if class_weight is not None:
            train["class_weight"] = inputs.class_weight(class_weight)
        spec = {"name": project.job_name(self.project_name), "data": data,
                "model": model, "search": search, "train": train}
        if self.workers_per_trial != 1:
            spec["resources"] = {"workers_per_trial": self.workers_per_trial}
        return spec, files

    def _search_extra(self) -> dict[str, Any]:
        return dict(self._search_settings)

    def _epochs(self, epochs: int) -> int:
        return epochs if self._max_epochs is None else int(self._max_epochs)

    def _discover_space(self) -> dict[str, Any]:
        """Run the shipped ``build_model`` once here, as KerasTuner does, to learn the space."""
        from tunecluster.models.custom import ModelCodeError, NotAModel, discover_space

        declared = (HyperParameters.from_config(self.hyperparameters.get_config())
                    if self.hyperparameters is not None else HyperParameters())
        given = {p.name for p in declared.space}
        try:
            # a fit or run_trial of the user's own may return the objective itself
            own = self._fit is not None or tuner_on_worker.own_run_trial(type(self))
            hp = discover_space(self._source, self._function, declared, "hypermodel.py",
                                objective=None if own else inputs.objective_names(
                                    self.objective), compiled=not own)
        except NotAModel as exc:
            raise BuildReturnedNoModel(
                "hypermodel", f"{exc.call}: expected the model-building function, or"
                " HyperModel.build(), to return a valid Keras Model instance; received"
                f" {exc.returned_type.__name__}") from None
        except ModelCodeError as exc:
            raise SpecError("hypermodel", str(exc)) from None
        new = [p for p in hp.space if p.name not in given]
        if new and not self.allow_new_entries:
            raise RuntimeError("`allow_new_entries` is `False`, but build_model declares"
                               f" new entries: {', '.join(p.name for p in new)}")  # as KT
        if new and not self.tune_new_entries:
            fixed = HyperParameters()
            for p in hp.space:
                if p.name in given:
                    fixed._register(p)
                else:
                    fixed.Fixed(p.name, hp.values[p.name])
            hp = fixed
        self._space = hp.get_config()
        return self._space

    # --- on a worker (a class with its own run_trial) -------------------------------------

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        """KerasTuner's ``Tuner.run_trial``: what a subclass's ``super().run_trial``
        calls. It runs on the cluster's workers (here when called by hand)."""
        return tuner_on_worker.run_trial(self, trial, args, kwargs)

    def _build_and_fit_model(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        """KerasTuner's (AutoKeras overrides it): build and fit one execution's model,
        on the workers."""
        return tuner_on_worker.build_and_fit_model(self, trial, args, kwargs)

    def on_worker(self, hypermodel: Any, build: Any, executions_per_trial: int,
                  objective: tuple[str, str]) -> None:
        tuner_on_worker.on_worker(self, hypermodel, build, executions_per_trial, objective)

    def user_attributes(self) -> dict[str, Any]:
        """The attributes a subclass set of its own: they travel with its run_trial."""
        ours = tuner_on_worker.CLUSTER_ATTRIBUTES
        return {k: v for k, v in vars(self).items() if k not in ours}

    # --- results (KerasTuner's API) ---------------------------------------------------------

    def results(self) -> dict[str, Any]:
        """The job's results document (``tunecluster results JOB --json``)."""
        if self.job is None:
            raise TuneclusterError("no search yet: call search() first")
        if self._results is None or self._results["state"] not in _FINAL:
            self._results = self.job.results()
        return self._results

    def get_best_hyperparameters(self, num_trials: int = 1) -> list[HyperParameters]:
        return [t.hyperparameters for t in self.oracle.get_best_trials(num_trials)]

    def get_best_models(self, num_models: int = 1) -> list[Any]:
        """The best trials' models (at their best epoch), loaded from the artifacts."""
        return [self.load_model(trial) for trial in self.oracle.get_best_trials(num_models)]

    def load_model(self, trial: Any) -> Any:
        """One trial's model (KerasTuner's ``Trial``, or its id) at its best epoch, as
        KerasTuner brings it back: built by the hypermodel with the trial's
        hyperparameters, then given the trial's weights, read from this machine's view
        of the artifacts root when it has one, else through the cluster. (So models
        Keras cannot deserialize, a ``Lambda`` layer, a model subclass, come back too.)"""
        from tunecluster.artifacts import trial_model
        from tunecluster.models.saved import load_model

        trial_id = getattr(trial, "trial_id", trial)
        rows = {t["trial"]: t for t in self.results()["trials"]}
        assert self.job is not None and self._artifacts is not None
        if trial_id not in rows:
            raise KeyError(f"search {self.job.id} has no trial {trial_id!r}")
        if rows[trial_id].get("model") == "" or self.hypermodel is None:
            raise TuneclusterError(f"trial {trial_id} of search {self.job.id} trained no"
                                   " model (its run_trial built none with a hypermodel)")
        # the hypermodel this process holds: never the source stored with the job,
        # which whoever can write Redis could have written
        build = (self.hypermodel.build if hasattr(self.hypermodel, "build")
                 else self.hypermodel)
        if self._compile:  # Tuner(optimizer=, loss=, metrics=): as the trials compiled it
            build = tuner_on_worker.compiled_with(build, self._compile)
        values = {**(rows[trial_id].get("hyperparameters") or {}),
                  **(rows[trial_id].get("tuner") or {})}
        path = trial_model(self._artifacts, self.job.id, trial_id, rows[trial_id].get("model"))
        if path.is_file():
            return load_model(path, build=build, values=values)
        try:  # a cluster whose artifacts this machine cannot see: through Redis
            return self.job.trial_model(trial_id, build=build)
        except TuneclusterError as exc:
            raise TuneclusterError(
                f"cannot read trial {trial_id}'s model here ({path}): {exc}; pass"
                f" the cluster's artifacts root as ${defaults.ARTIFACTS_ENV}") from None

    @property
    def project_dir(self) -> str:
        """``directory/project_name``: where the project file (and an embedded cluster's
        data and artifacts) live."""
        return str(Path(self.directory, self.project_name))

    def get_trial_dir(self, trial_id: str) -> str:
        """Where a trial's files are on the cluster's artifacts root."""
        from tunecluster.artifacts import trial_dir

        if self.job is None or self._artifacts is None:
            raise TuneclusterError("no search yet: call search() first")
        return str(trial_dir(self._artifacts, self.job.id, trial_id))

    def reload(self) -> None:
        """Read the search's state again from the cluster (KerasTuner reads its oracle's
        files); the oracle itself lives on the chief."""
        import redis

        if self.job is None:
            return
        try:
            space, results = self.job.record().space, self.job.results()
        except (TuneclusterError, redis.RedisError, OSError):
            return  # an embedded cluster is gone after its search: what was read stays
        self._space, self._results = space, results
        self.oracle.sync()

    def save(self) -> None:
        """Write the project file naming the job (the chief persists the oracle itself
        at every trial), so a tuner re-created with ``overwrite=False`` reattaches."""
        if self.job is not None:
            project.write_project(self.directory, self.project_name, self.job.id,
                                  type(self).__name__)

    def results_summary(self, num_trials: int = 10) -> None:
        """Print the best trials, as KerasTuner does."""
        summaries.print_results(self, num_trials)

    def search_space_summary(self, extended: bool = False) -> None:
        """Print the search space, as KerasTuner does (after ``search`` or here)."""
        summaries.print_space(self._space if self._space is not None else self._discover_space())


# --- helpers ----------------------------------------------------------------------------


def _up_cluster_url() -> str | None:
    """The local cluster of ``tunecluster up``, when one runs (warm workers: no start)."""
    from tunecluster.cluster.persistent import current_url

    return current_url()
