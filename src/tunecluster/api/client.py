"""The Python API of a cluster: submit jobs and follow, read, cancel and delete them.

``Client`` talks to Redis only (the control plane), like the CLI, which is a thin layer
over it. A ``Job`` is a handle (an id and the client): every method reads Redis afresh,
so a handle made by ``Client.job(id)`` in another process sees the same job.

Contract:
- ``submit`` validates the whole job (spec, search space, data files) before anything
  is queued; nothing is written to Redis when it raises.
- ``Job.wait()`` returns only for a completed job: a failed or cancelled one raises
  (``JobFailed`` / ``JobCancelled``) unless ``raise_on_failure=False``.
- ``Job.results()`` is the document ``tunecluster results --json`` prints.
- ``Job.events()`` yields the job's events in order and ends once the job is final
  (the event that made it final included).
- TensorFlow is imported only by ``Job.best_model`` / ``Job.trial_model``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunecluster import defaults
from tunecluster.errors import StoreError
from tunecluster.ids import check_job_id
from tunecluster.states import JobState, TrialState

if TYPE_CHECKING:
    from tunecluster.api.submission import PreparedJob
    from tunecluster.spec import JobSpec
    from tunecluster.store import Event, JobRecord, Store


def _local_cluster() -> tuple[str | None, str | None]:
    """The URL and artifacts root of the local cluster of ``tunecluster up``, if one runs."""
    from tunecluster.artifact_store import is_url
    from tunecluster.cluster.persistent import current

    state = current()
    if state is None:
        return None, None
    return state.url, (None if is_url(state.artifacts) else state.artifacts)



class Client:
    """A connection to one cluster's control plane.

    ``url``: the Redis URL (``redis://`` or ``rediss://``); None reads
    ``$TUNECLUSTER_REDIS_URL``, else the local cluster of ``tunecluster up`` when one
    runs, else the local default. ``artifacts``: where this
    machine sees the cluster's artifacts root (for ``Job.best_model``); None reads
    ``$TUNECLUSTER_ARTIFACTS``, else ``./artifacts``. The connection is opened on first
    use, so a bad spec is reported before an unreachable Redis.
    """

    def __init__(self, url: str | None = None, *, artifacts: str | os.PathLike[str] | None = None,
                 retries: int = 1) -> None:
        local_url, local_artifacts = (None, None) if url or os.environ.get(
            defaults.REDIS_URL_ENV) else _local_cluster()
        self.url = url or os.environ.get(defaults.REDIS_URL_ENV) or local_url \
            or defaults.REDIS_URL
        self.artifacts = Path(artifacts if artifacts is not None else
                              os.environ.get(defaults.ARTIFACTS_ENV) or local_artifacts
                              or defaults.ARTIFACTS_ROOT)
        self._retries = retries
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        """The underlying ``Store`` (connected on first use)."""
        if self._store is None:
            from tunecluster.store import Store

            self._store = Store.from_url(self.url, retries=self._retries)
        return self._store

    def submit(self, spec: Any, overrides: Iterable[str] = (), *,
               files: Mapping[str, bytes] | None = None,
               space: Mapping[str, Any] | None = None) -> Job:
        """Validate and queue a job; returns its handle.

        ``spec``: a job file's path, a mapping (as a job file holds: a ``model.module``
        and data paths relative to the working directory), a ``JobSpec`` or a
        ``PreparedJob``. ``overrides``: ``dotted.path=value`` strings (path and mapping
        only). ``files`` adds data files to upload (name -> bytes; they must be named by
        ``data``); ``space`` replaces the discovered search space (KerasTuner config).
        """
        from tunecluster.api import submission as prep
        from tunecluster.spec import JobSpec

        if isinstance(spec, prep.PreparedJob):
            job = spec
        elif isinstance(spec, JobSpec):
            job = self._prepare(spec, files, space)
        elif isinstance(spec, Mapping):
            from tunecluster.spec.load import (
                absolute_data_paths,
                apply_overrides,
                attach_sources,
                parse_spec,
            )

            raw = apply_overrides(spec, overrides)
            raw = absolute_data_paths(attach_sources(raw, Path.cwd()), Path.cwd())
            job = self._prepare(parse_spec(raw), files, space)
        elif isinstance(spec, (str, os.PathLike)):
            job = prep.prepare_job(spec, overrides, discover=space is None)
            if space is not None:
                job.space = dict(space)
            job.files.update(files or {})
        else:
            raise TypeError(f"spec must be a path, a mapping or a JobSpec, got"
                            f" {type(spec).__name__}")
        return Job(self, prep.submit(self.store, job))

    @staticmethod
    def _prepare(spec: JobSpec, files: Mapping[str, bytes] | None,
                 space: Mapping[str, Any] | None) -> PreparedJob:
        from tunecluster.api import submission as prep

        given = dict(files or {})
        named = spec.data_files
        missing = [p for p in named if p not in given]
        gathered = prep.gather_files(spec) if missing else {}
        prep.check_data(spec, gathered)  # the files read here, from this machine's disk
        return prep.PreparedJob(
            spec, dict(space) if space is not None else prep.search_space(spec, files=given),
            {**gathered, **given})

    def job(self, job_id: str) -> Job:
        """The handle of an existing job (checked when first read)."""
        return Job(self, check_job_id(job_id, "job"))

    def jobs(self, limit: int = 100) -> list[Job]:
        """Handles of the cluster's jobs, newest first."""
        return [Job(self, j) for j in self.store.jobs.all(limit)]

    def summaries(self, limit: int = 100) -> list[dict[str, Any]]:
        """A summary row per job, newest first (``tunecluster list --json``); a job whose
        record cannot be read is one row in state ``malformed`` with the reason."""
        from tunecluster.store.results import job_summaries

        return job_summaries(self.store.jobs, limit)

    def cluster(self) -> dict[str, Any]:
        """The live workers (id, slots, devices...) and the chief in office (or None)."""
        live = self.store.workers.live(defaults.LEASE_S)
        return {"workers": [{"id": w, **info} for w, info in live.items()],
                "chief": self.store.chief()}

    def __repr__(self) -> str:
        from tunecluster.store import redact

        return f"Client({redact(self.url)!r})"


class Job:
    """A handle on one job of a cluster. Methods read Redis each time they are called."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.id = job_id
        self.last_fetch: str | None = None  # where the last model loaded came from
        self.resumed_after: str | None = None  # see resume()
        self.removed: list[str] = []  # see delete()

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Job) and other.id == self.id
                and other.client.url == self.client.url)

    def __hash__(self) -> int:
        return hash(self.id)

    def record(self) -> JobRecord:
        """The raw job record (``StoreError`` when Redis knows no such job)."""
        return self.client.store.jobs.get(self.id)

    @property
    def state(self) -> str:
        """``queued``, ``running``, ``finalizing``, ``completed``, ``failed`` or ``cancelled``."""
        return self.record().state

    def status(self) -> dict[str, Any]:
        """A summary: job, name, state, objective, best, counts, error, created, finished
        (what ``tunecluster status JOB --json`` prints)."""
        from tunecluster.store.results import SUMMARY_FIELDS

        data = self.results()
        return {k: data[k] for k in SUMMARY_FIELDS}

    def results(self) -> dict[str, Any]:
        """The results document (``tunecluster results JOB --json``): the leaderboard so
        far while the job runs, with the test score and artifacts once it is final."""
        from tunecluster.store.results import build_results

        return build_results(self.client.store.jobs, self.id)

    def wait(self, timeout: float | None = None, poll_s: float = 0.5, *,
             raise_on_failure: bool = True) -> dict[str, Any]:
        """Block until the job is final and return its results document.

        A job that ended ``failed`` raises ``JobFailed``, one ``cancelled`` raises
        ``JobCancelled`` (both ``JobNotCompleted``: ``.state``, ``.error``,
        ``.results``); ``raise_on_failure=False`` returns the document whatever the end.
        ``WaitTimeout`` (a ``TimeoutError``) after ``timeout`` seconds: the job keeps
        running."""
        from tunecluster.api.submission import wait
        from tunecluster.errors import not_completed

        results = wait(self.client.store, self.id, timeout, poll_s)
        if raise_on_failure and results["state"] != JobState.COMPLETED:
            raise not_completed(self.id, results)
        return results

    def events(self, after: str = "0-0", block_s: float = 0.5) -> Iterator[Event]:
        """The job's events from ``after`` on (``Event``: id, type, data), live; the
        iterator ends once the job is final and every event before that was yielded."""
        from tunecluster.store import FINAL_STATES

        store = self.client.store
        while True:
            final = self.state in FINAL_STATES  # read before the events: none is missed
            events = store.events.read(self.id, after, block_ms=None if final else
                                       int(block_s * 1000), count=500)
            for event in events:
                after = event.id
                yield event
            if final and not events:
                return

    def cancel(self) -> str:
        """Ask the chief to cancel (running trials stop within an epoch); returns the
        state the job had. A final job is left as it is."""
        return self.client.store.jobs.request_cancel(self.id)

    def resume(self, max_trials: int | None = None,
               files: Mapping[str, bytes] | None = None) -> str:
        """Continue a final job's search up to ``max_trials`` (its oracle, trials and
        leaderboard go on where they ended); returns the state the job had. Uploaded
        data freed at its end comes from ``files`` or, for a job submitted from files,
        from the same paths on this machine. Resuming an active job already at
        ``max_trials`` does nothing; ``resumed_after`` is the event id the resumed
        run's events follow (None when nothing was done)."""
        from tunecluster.data.files import SUFFIXES

        record = self.record()
        given = dict(files or {})
        for name in _file_names(record.fields.get("files")):
            # The names come from Redis: only data files (by their type) are read back
            # and sent, never any file a forged record names (a key, a password file).
            if name not in given and Path(name).suffix.lower() in SUFFIXES \
                    and Path(name).is_file():
                given[name] = Path(name).read_bytes()
        state, self.resumed_after = self.client.store.jobs.resume(self.id, max_trials, given)
        return state

    def delete(self, force: bool = False, timeout: float = 120.0, *,
               artifacts_root: str | os.PathLike[str] | None = None) -> str | None:
        """Remove every Redis key of the job; an active job needs ``force`` (cancelled
        first). Returns the state it had. With ``artifacts_root`` (a directory or an
        object store URL) the job's files there go too, ``removed`` lists them; a root
        that would lead outside itself (a symlinked job directory) is refused before
        Redis is touched."""
        from tunecluster.artifacts import job_artifact_dirs, remove_job_artifacts

        if artifacts_root is not None:
            job_artifact_dirs(str(artifacts_root), self.id)
        state = self.client.store.jobs.delete(self.id, force=force, wait_s=timeout)
        self.removed = ([] if artifacts_root is None
                        else remove_job_artifacts(str(artifacts_root), self.id))
        return state

    def best(self) -> dict[str, Any]:
        """The best trial so far (trial, score, hyperparameters, ...) with the job's test
        score, best model name and input; ``StoreError`` before any trial completed."""
        data = self.results()
        if not data["best"]:
            raise StoreError(f"job {self.id} has no completed trial yet")
        return {**data["best"], "test": data["test"],
                "best_model": data["artifacts"].get("best_model"), "input": data.get("input")}

    def artifact_names(self) -> list[str]:
        """What ``download_all`` fetches: results.json, the best model, then the trials'
        models by rank (the names the cluster indexed)."""
        from tunecluster.store import downloads

        return downloads.names(self.client.store, self.id)

    def download(self, name: str, dest: str | os.PathLike[str],
                 local_root: str | os.PathLike[str] | None = None) -> Any:
        """Put the artifact ``name`` at ``dest`` (a file, or a directory to put it in):
        from ``local_root`` (default: the client's artifacts root) when it holds the same
        file, else through Redis, checksum verified. Returns where it went and whence
        (``path``, ``source``, ``size``, ``sha256``, ``message``); ``DownloadError``
        names the reason."""
        from tunecluster.store import downloads

        root = self.client.artifacts if local_root is None else local_root
        return downloads.retrieve(self.client.store, self.id, name, dest, root)

    def best_model(self, compile: bool = True, *,
                   custom_objects: Mapping[str, Any] | None = None,
                   module: str | os.PathLike[str] | None = None,
                   trust_job_code: bool = False,
                   build: Callable[..., Any] | None = None) -> Any:
        """The job's exported best model, loaded (``keras.Model``): read from this
        machine's view of the artifacts root (``Client(artifacts=...)``) when it holds
        the job's file, else downloaded through Redis (checksum verified);
        ``last_fetch`` says which.

        A model with classes or functions of its own (a custom model's layers, losses,
        metrics) needs them to load: ``custom_objects`` (name -> object), or ``module``,
        the path of your own copy of the model's module (its classes and functions are
        used), or ``trust_job_code=True`` to run the module's source stored with the
        job in Redis. That source is never run otherwise: whoever can write Redis could
        have written it. ``build``: your ``build_model(hp)``; the model is then built by
        it with the trial's hyperparameters and given the trained weights, as KerasTuner
        brings models back (for models Keras cannot deserialize: ``Lambda`` layers,
        model subclasses, which the cluster keeps as weights)."""
        from tunecluster.artifacts import BEST_MODEL

        data = self.results()
        if data["state"] != JobState.COMPLETED:
            raise StoreError(f"job {self.id} has no exported best model (state"
                             f" {data['state']}); wait() for it to complete")
        best = data.get("best") or {}
        values = {**(best.get("hyperparameters") or {}), **(best.get("tuner") or {})}
        return self._load(BEST_MODEL, compile, custom_objects, module, trust_job_code,
                          build, values)

    def trial_model(self, trial: str, compile: bool = True, *,
                    custom_objects: Mapping[str, Any] | None = None,
                    module: str | os.PathLike[str] | None = None,
                    trust_job_code: bool = False,
                    build: Callable[..., Any] | None = None) -> Any:
        """One finished trial's model (its best epoch), loaded; from the artifacts root
        or, for the job's best few trials, through Redis. The code it needs: as for
        ``best_model``."""
        from tunecluster.store.downloads import trial_name

        row = self.client.store.jobs.trial(self.id, trial)
        if row.get("state") != TrialState.COMPLETED:
            raise StoreError(f"trial {trial} of job {self.id} is not completed"
                             f" ({row.get('state', 'no such trial')})")
        from tunecluster.store import codec

        try:
            values = {**codec.loads_object(row.get("values") or "{}", "trial values")}
        except (StoreError, ValueError):
            values = {}
        return self._load(trial_name(trial), compile, custom_objects, module, trust_job_code,
                          build, values)

    def _objects(self, custom_objects: Mapping[str, Any] | None,
                 module: str | os.PathLike[str] | None,
                 trust_job_code: bool) -> tuple[dict[str, Any] | None, str | None]:
        """The custom objects to load with, and, when the job's model has code of its own
        that none was given for, its module's name (to say what is missing)."""
        from tunecluster.models.custom import job_objects, module_objects
        from tunecluster.spec import parse_spec

        objects = dict(custom_objects or {})
        if module is not None:
            objects = {**module_objects(module), **objects}
        spec = parse_spec(self.record().spec)
        if trust_job_code:  # the user's explicit choice: run the code stored in Redis
            objects = {**(job_objects(spec) or {}), **objects}
        own_code = not spec.model.is_builtin and spec.model.source is not None
        unmet = spec.model.module or "model.py" if own_code and not objects else None
        return objects or None, unmet

    def _load(self, name: str, compile: bool, custom_objects: Mapping[str, Any] | None,
              module: str | os.PathLike[str] | None, trust_job_code: bool,
              build: Callable[..., Any] | None = None,
              values: Mapping[str, Any] | None = None) -> Any:
        import logging
        import tempfile

        from tunecluster.models.saved import load_model
        from tunecluster.store.downloads import DownloadError, retrieve

        objects, unmet = self._objects(custom_objects, module, trust_job_code)
        with tempfile.TemporaryDirectory(prefix="tunecluster-model-") as tmp:
            try:
                got = retrieve(self.client.store, self.id, name,
                               Path(tmp) / Path(name).name, local_root=self.client.artifacts)
            except DownloadError as exc:
                raise StoreError(f"job {self.id}: cannot read its model here: {exc}") from None
            self.last_fetch = got.message
            logging.getLogger("tunecluster").info("%s", got.message)
            if build is not None:  # KerasTuner's way: the user's build, the weights
                return load_model(got.path, build=build, values=values or {})
            try:
                return load_model(got.path, compile=compile, custom_objects=objects)
            except (TypeError, ValueError) as exc:
                if unmet is None:
                    raise
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise StoreError(
                    f"job {self.id}'s model needs the code of its module {unmet} to load"
                    f" ({first}); pass custom_objects=..., module='path/to/{unmet}' (your"
                    " copy) or trust_job_code=True (runs the source stored in Redis)"
                ) from None


def _file_names(raw: str | None) -> list[str]:
    """The uploaded file names a job record lists (its ``files`` field)."""
    from tunecluster.store import codec

    names = codec.loads(raw or "[]", "uploaded files")
    return [str(n) for n in names] if isinstance(names, list) else []
