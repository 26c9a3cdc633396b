"""Ray Tune as the alternative scheduler: what the chief runs for a ``scheduler: ray`` job.

``RayJobRunner`` drives one job from start to end in a background thread of the chief.
Each Ray run of the job is a child process (``driver.py``: a Ray driver whose cluster
dies hangs and is then ended by Ray, which must not be the chief): it connects to Ray
(``$RAY_ADDRESS``, the operator's setting, also ``tunecluster chief --ray-address``;
else a local Ray started on demand; never an address from the job, since Ray's client
protocol unpickles what the server sends) and runs a ``tune.Tuner`` whose searcher is the
job's KerasTuner oracle (``searcher.OracleSearcher``) and whose trainable is the native
trial runner (``trainable.TrialTrainable``). ``RecordsCallback`` writes every trial
start, epoch, retry and failure to the job's Redis records and event stream;
``JobStopper`` ends the Ray run on ``cancel``, on a failed search, or when another chief
took the job over or holds the chief lock. While the Ray cluster cannot be reached the
job waits and says why (``reach.py``); when it is back a new Ray run starts.

The thread keeps the job's state: every job-state write, the take-over of a run and the
finalize (``engine.finalize.finalize``, as the native chief) go under the chief's
``Fence``, so a deposed chief writes none of them; it stops its Ray run and stands by.

``RayJobs`` is the chief's hook: one runner per Ray job, started once. A chief that
finds a Ray job ``running`` without a runner of its own (it restarted, or took over
from another chief) starts a new Ray run of the job: the oracle resumes from Redis, and
the trials the previous run left unfinished run again (resuming from their last
checkpoint, counting an attempt) before new ones are suggested. Ray's scheduler state
(ASHA rungs, medians) starts afresh in the new run.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from tunecluster.spec.models import JobSpec
from tunecluster.states import JobState, TrialState
from tunecluster.store import Store, codec
from tunecluster.store.fence import Fence, LostLeadership
from tunecluster.store.ray_records import FINAL, RayRecords

log = logging.getLogger("tunecluster.ray")

LOCAL = "local"
NUM_CPUS_ENV = "TUNECLUSTER_RAY_NUM_CPUS"  # CPUs of a local Ray started on demand
MAX_CONCURRENT_ENV = "TUNECLUSTER_RAY_MAX_CONCURRENT"  # trials at once (default: fit)
LOG_TO_DRIVER_ENV = "TUNECLUSTER_RAY_LOG_TO_DRIVER"  # 1: trial output in the chief's log
# Ray 2.x on Linux replaces 127.0.0.1 with the machine's primary address, and its
# sockets listen there, unless this is in the environment of every Ray process (read
# once, when Ray is imported; the processes a local Ray starts inherit it).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
RESTART_AFTER_S = 10.0  # a chief restarts a job's Ray run at most this often
TICK_S = 1.0  # how often the chief's hook looks for Ray jobs without a runner
RETRY_S = 5.0  # while Ray is unreachable: how often the chief tests it, and starts a run

_ray_lock = threading.Lock()  # ray.init is process-wide
_connected: str | None = None  # the address this process's Ray connection was made for
_tune_lock = threading.Lock()  # one Ray Tune run at a time per chief process


class RayUnavailable(RuntimeError):
    """Ray cannot be used for this job (not installed, unreachable, another address)."""


class RayUnreachable(RayUnavailable):
    """``ray.init`` failed: the cluster is down or not there (yet); the job waits."""


# --- connecting ------------------------------------------------------------------------------


def ray_address(spec: JobSpec) -> str | None:
    """The operator's Ray cluster (``$RAY_ADDRESS`` of the chief), None for a local Ray.
    A job cannot choose it (``ray.address`` is a spec error): a submitter could otherwise
    point the chief at a Ray server of their own, whose client protocol unpickles."""
    return os.environ.get("RAY_ADDRESS") or None


def is_local(address: str | None) -> bool:
    """Whether ``address`` is a Ray on this machine's loopback (None: one started here;
    "auto" may be any cluster this machine belongs to)."""
    if not address:
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host.strip("[]") in LOOPBACK_HOSTS


def keep_ray_on_loopback(address: str | None) -> None:
    """Before Ray is imported: a local Ray (and a driver of a loopback Ray) stays on
    127.0.0.1. An operator's explicit setting wins; a remote cluster is left alone."""
    if is_local(address):
        for name, value in LOOPBACK_ENV.items():
            os.environ.setdefault(name, value)


def connect_ray(address: str | None) -> str:
    """Connect this process to Ray once; returns the address ("local" for on-demand)."""
    global _connected
    keep_ray_on_loopback(address)
    try:
        import ray
    except ImportError:
        raise RayUnavailable("scheduler: ray needs Ray Tune: pip install 'tunecluster[ray]'"
                             ) from None
    want = address or LOCAL
    with _ray_lock:
        if ray.is_initialized():
            if _connected not in (None, want):
                raise RayUnavailable(f"this chief is connected to Ray at {_connected},"
                                     f" not {want} (one Ray per chief)")
            return want
        quiet = {"log_to_driver": os.environ.get(LOG_TO_DRIVER_ENV, "0") == "1",
                 "logging_level": logging.WARNING}
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(num_cpus=int(os.environ.get(NUM_CPUS_ENV) or os.cpu_count() or 1),
                         include_dashboard=False, **quiet)
        except Exception as exc:  # noqa: BLE001 - reported as the job's error
            hint = ("" if address is None or os.environ.get("RAY_AUTH_MODE") else
                    " (a cluster with token authentication needs RAY_AUTH_MODE=token and"
                    " RAY_AUTH_TOKEN in the chief's environment)")
            kind = RayUnreachable if address else RayUnavailable
            raise kind(f"cannot start or reach Ray at {want}: "
                       f"{str(exc).strip().splitlines()[0][:300]}{hint}") from None
        _connected = want
        return want


def trial_resources(spec: JobSpec) -> dict[str, float]:
    resources = {"cpu": 1.0}
    if spec.resources.gpus_per_trial:
        resources["gpu"] = float(spec.resources.gpus_per_trial)
    return resources


def max_concurrent(spec: JobSpec, resources: dict[str, float]) -> int:
    """Trials at once: ``ray.max_concurrent_trials``, else what the Ray cluster fits now.
    No more, so that the oracle suggests each trial from the latest results."""
    import ray

    if spec.ray and spec.ray.max_concurrent_trials:
        return spec.ray.max_concurrent_trials
    if os.environ.get(MAX_CONCURRENT_ENV):
        return max(1, int(os.environ[MAX_CONCURRENT_ENV]))
    total = ray.cluster_resources()
    fits = [int(total.get(name.upper(), 0) // need) for name, need in resources.items() if need]
    return max(1, min(fits) if fits else 1)


def make_scheduler(spec: JobSpec) -> tuple[Any, str]:
    """Ray's early stopping from ``ray.early_stopping`` (None: Tune's FIFO)."""
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    from tunecluster.ray.trainable import EPOCH

    options = spec.ray.early_stopping if spec.ray else None
    if options is None:
        return None, "ray"
    if options.scheduler == "asha":
        return ASHAScheduler(time_attr=EPOCH, max_t=spec.train.epochs,
                             grace_period=min(options.grace_period, spec.train.epochs),
                             reduction_factor=options.reduction_factor or 4,
                             stop_last_trials=False), "asha"
    # min_time_slice=inf: never PAUSE a trial (its progress lives in its own checkpoint)
    return MedianStoppingRule(time_attr=EPOCH, grace_period=options.grace_period,
                              min_samples_required=options.min_samples_required or 3,
                              min_time_slice=math.inf, hard_stop=True), "median"


# --- the runner ------------------------------------------------------------------------------


def _refuse_object_store(root: Path) -> None:
    """Ray trials write to their node's disk: they need a directory every node shares."""
    from tunecluster.artifact_store import open_store

    artifacts = open_store(root)
    if artifacts.remote:
        raise ValueError(f"scheduler: ray needs a shared directory as the artifacts root;"
                         f" this cluster's is {artifacts.url()}: use scheduler: native")


class RayJobRunner:
    """Runs one ``scheduler: ray`` job with Ray Tune to its end, then finalizes it."""

    def __init__(self, store: Store, job_id: str, spec: JobSpec, space: dict[str, Any],
                 artifacts_root: str | Path, *, uploaded: list[str] | None = None,
                 chief_id: str = "chief", fence: Fence = Fence.NONE) -> None:
        self.store = store
        self.job = job_id
        self.spec = spec
        self.space = dict(space)
        self.artifacts = Path(artifacts_root).resolve()
        self.uploaded = list(uploaded or [])
        self.chief_id = chief_id
        self.fence = fence  # the chief's: every job-state write and finalize goes under it
        self.records = RayRecords(store)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.state: str | None = None  # the job's final state, once finalized
        self.run_no: int | None = None  # this runner's latest Ray run of the job

    # --- thread --------------------------------------------------------------------------

    def start(self) -> RayJobRunner:
        self.thread = threading.Thread(target=self._run_logged, name=f"ray-{self.job}",
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """End the Ray run without finalizing (this chief stops or lost leadership)."""
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _run_logged(self) -> None:
        try:
            self.run()
        except LostLeadership:
            log.warning("job %s: this chief was deposed; its Ray run wrote nothing and"
                        " stopped", self.job)
        except Exception:  # noqa: BLE001 - logged; the chief may start another run later
            log.exception("Ray run of job %s ended abnormally", self.job)

    # --- the job -------------------------------------------------------------------------

    def run(self) -> str | None:
        """The whole job: returns its final state, or None if stopped before the end.
        Every job-state write and the finalize are fenced (``LostLeadership`` when this
        chief no longer leads: nothing is written)."""
        from tunecluster.engine.finalize import summarize_errors
        from tunecluster.store.results import build_results

        record = self.store.jobs.get(self.job)
        if record.state == JobState.FINALIZING:  # a previous chief died while finalizing
            return self._finalize(*self._outcome())
        if not self._wait_for_tune_slot():
            return None
        try:
            error = self._drive()
        finally:
            _tune_lock.release()
        if self.stop_event.is_set() or (self.run_no is not None
                                        and self.records.owner(self.job) != self.chief_id):
            return None  # another run (this chief's next, or another chief) goes on
        state, failure = self._outcome()
        if error:
            state, failure = JobState.FAILED, error
        elif state == JobState.FAILED and failure:
            failure = (f"{failure} | errors: "
                       f"{summarize_errors(build_results(self.store.jobs, self.job)['trials'])}")
        return self._finalize(state, failure)

    def _drive(self) -> str | None:
        """Ray runs of the job, each in a child process, until Tune ends the search:
        None, or the job's error. While the Ray cluster cannot be reached the job waits
        and says why (``reach.Waiting``), up to ``TUNECLUSTER_RAY_UNREACHABLE_S``."""
        import redis

        from tunecluster.ray.driver import drive_run
        from tunecluster.ray.reach import Waiting, reachable

        try:
            _refuse_object_store(self.artifacts)
        except ValueError as exc:
            return f"ray: ValueError: {exc}"
        address = ray_address(self.spec)
        keep_ray_on_loopback(address)  # the child inherits it
        waiting = Waiting(self.store, self.job, address or LOCAL, self.fence)
        while not self.stop_event.is_set():
            up = reachable(address)
            if not up:
                waiting.unreachable()
            error = waiting.over()
            if error:
                return error
            if not up:
                self.stop_event.wait(RETRY_S)
                continue
            self.run_no = self.records.take_over(self.job, self.chief_id, address or LOCAL,
                                                 fence=self.fence)
            outcome = drive_run(self, self.run_no, address, waiting)
            if outcome.kind == "done":
                waiting.reached()
                return None
            if outcome.kind == "error" or (outcome.kind == "unreachable" and not address):
                return outcome.message
            if outcome.kind == "redis":
                raise redis.ConnectionError(outcome.message)
            if outcome.kind == "unreachable":
                log.warning("job %s: Ray at %s unreachable (%s); the job waits for it",
                            self.job, address, outcome.message)
                waiting.unreachable()
                self.stop_event.wait(RETRY_S)
        return None

    def tune(self, run: int) -> None:
        """Ray Tune run ``run`` of the job, in this process (the driver child's)."""
        from ray import tune

        from tunecluster.engine.oracle_host import OracleHost
        from tunecluster.ray.hooks import JobStopper, RecordsCallback
        from tunecluster.ray.searcher import OracleSearcher
        from tunecluster.ray.trainable import TRIAL, TrialTrainable, job_context
        from tunecluster.spec import spec_to_json
        from tunecluster.store import raw_client

        # Results live in Redis: no per-trial json/csv/TensorBoard files, no Tune tables.
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 is then silent
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        host = OracleHost.create(self.spec, self.space, *self.store.jobs.oracle_state(self.job))
        resume = self._recover(host)
        scheduler, scheduler_name = make_scheduler(self.spec)
        searcher = OracleSearcher(self.store, self.job, self.spec, self.space, host,
                                  resume=resume, scheduler_name=scheduler_name)
        raw = raw_client(self.store.client)
        files = {name: self.store.jobs.file(raw, self.job, name) for name in self.uploaded}
        ctx = job_context(self.job, spec_to_json(self.spec), self.space, str(self.artifacts),
                          files)
        resources = trial_resources(self.spec)
        trainable = tune.with_resources(tune.with_parameters(TrialTrainable, job=ctx),
                                        resources)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=self.spec.search.objective_name, mode=self.spec.search.direction,
                search_alg=searcher, scheduler=scheduler, num_samples=-1,
                max_concurrent_trials=max_concurrent(self.spec, resources), reuse_actors=True,
                trial_name_creator=lambda t: f"{t.config[TRIAL]}",
                trial_dirname_creator=lambda t: f"{t.config[TRIAL]}-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=f"run-{run}", storage_path=str(self.artifacts / self.job / "ray"),
                failure_config=tune.FailureConfig(
                    max_failures=self.spec.search.max_retries_per_trial),
                stop=JobStopper(self.store, self.job, self.chief_id, run, self.stop_event),
                callbacks=[RecordsCallback(self.store, self.job)],
                verbose=0,
            ),
        )
        log.info("job %s: Ray Tune run %d starts", self.job, run)
        tuner.fit()
        log.info("job %s: Ray Tune run %d ended", self.job, run)

    def _recover(self, host: Any) -> list[tuple[str, dict[str, Any]]]:
        """Trials a previous run left open: run them again (within their retry budget)."""
        resume = []
        for row in self.store.jobs.trials(self.job):
            trial, state = row.get("trial", ""), row.get("state")
            if not host.is_open(trial):
                continue
            values = codec.loads_object(row.get("values", "{}"), "trial values")
            if state in FINAL:  # ended in Redis, not the oracle
                for epoch, metrics in self.store.jobs.epochs(self.job, trial).items():
                    host.update(trial, epoch, metrics)
                self._end(host, trial, state == TrialState.COMPLETED, row.get("error"))
                continue
            reason = "its Ray run ended (its chief or its Ray cluster went away)"
            attempts, budget = int(row.get("attempts") or 0), int(row.get("max_retries") or 0)
            if state == TrialState.RUNNING and attempts > budget:
                self.records.close(self.job, trial, TrialState.FAILED, reason)
                self._end(host, trial, False, reason)
                continue
            if state == TrialState.RUNNING:
                self.records.retry(self.job, trial, row.get("worker", ""), reason)
            resume.append((trial, values))
        from tunecluster.ray.searcher import oracle_snapshot

        self.records.persist_oracle(self.job, *oracle_snapshot(host))
        return resume

    def _end(self, host: Any, trial: str, completed: bool, message: str | None) -> None:
        try:
            host.end(trial, completed=completed, message=message)
        except RuntimeError as exc:  # KerasTuner: too many consecutive failed trials
            self.records.fail(self.job, (
                f"{self.spec.search.max_consecutive_failed_trials} consecutive trials"
                f" failed: {str(exc).splitlines()[-1][:300]}"))

    def _outcome(self) -> tuple[str, str | None]:
        if self.records.cancelled(self.job):
            return JobState.CANCELLED, None
        failure = self.records.failure(self.job)
        return (JobState.FAILED, failure) if failure else (JobState.COMPLETED, None)

    def _finalize(self, state: str, error: str | None) -> str:
        from tunecluster.artifacts import MODEL_FILE, file_resolver, trial_dir
        from tunecluster.engine.finalize import finalize

        # First the fenced state change: a deposed chief stops here, having written nothing.
        self.store.jobs.set_state(self.job, JobState.FINALIZING, fence=self.fence)
        # Trials Tune stopped with the whole run (cancel, failed search) are still open.
        for row in self.records.open_trials(self.job):
            reason = "job cancelled" if state == JobState.CANCELLED else "job ended"
            self.records.close(self.job, row["trial"], TrialState.CANCELLED, reason)
        if state == JobState.COMPLETED:  # stopped trials save their model as their actor stops
            deadline = time.monotonic() + 60
            for row in self.store.jobs.trials(self.job):
                path = trial_dir(self.artifacts, self.job, row.get("trial", "")) / MODEL_FILE
                while (row.get("state") == TrialState.COMPLETED and not path.is_file()
                       and time.monotonic() < deadline):
                    time.sleep(0.2)
        resolve = file_resolver(self.store, self.job, self.artifacts, self.uploaded)
        try:
            results = finalize(self.store, self.job, self.spec, self.artifacts, state,
                               resolve=resolve, error=error, fence=self.fence)
        except LostLeadership:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken export must still end the job
            log.exception("finalizing %s failed", self.job)
            self.store.jobs.set_state(self.job, JobState.FAILED, fence=self.fence,
                                      error=f"finalize failed: {exc}")
            self.state = JobState.FAILED
            return self.state
        self.state = results["state"]
        log.info("job %s %s", self.job, self.state)
        return self.state

    def _wait_for_tune_slot(self) -> bool:
        """One Tune run at a time in this process; False if stopped while waiting."""
        while not _tune_lock.acquire(timeout=1.0):
            if self.stop_event.is_set():
                return False
        if self.stop_event.is_set():
            _tune_lock.release()
            return False
        return True


# --- the chief's hook ----------------------------------------------------------------------------


class RayJobs:
    """The chief's side: one RayJobRunner per active ``scheduler: ray`` job, started once."""

    def __init__(self, store: Store, artifacts_root: str | Path, chief_id: str,
                 fence: Fence | None = None) -> None:
        self.store = store
        self.artifacts = Path(artifacts_root).resolve()
        self.chief_id = chief_id
        # the chief's fence (its lock, its token): every write of the Ray path is under it
        self.fence = fence if fence is not None else Fence(store.keys.chief_lock, chief_id)
        self.runners: dict[str, RayJobRunner] = {}
        self._started: dict[str, float] = {}
        self._next_tick = 0.0

    def tick(self) -> None:
        """Start runners for Ray jobs without one (at most every ``TICK_S``)."""
        from tunecluster.errors import SpecError, StoreError
        from tunecluster.spec import parse_spec

        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + TICK_S
        active = self.store.jobs.active()
        self._forget(set(active))
        pipe = self.store.client.pipeline(transaction=False)
        for job in active:
            pipe.hget(self.store.keys.job(job), "scheduler")
        for job, scheduler in zip(active, pipe.execute(), strict=True):
            if scheduler != "ray":
                continue
            runner = self.runners.get(job)
            if runner is not None:
                if runner.alive:
                    continue
                self.runners.pop(job)
            if time.monotonic() - self._started.get(job, -math.inf) < RESTART_AFTER_S:
                continue
            try:
                record = self.store.jobs.get(job)
                if record.state not in (JobState.QUEUED, JobState.RUNNING, JobState.FINALIZING):
                    continue
                spec = parse_spec(record.spec)
                uploaded = codec.loads(record.fields.get("files", "[]"), "uploaded files")
            except (SpecError, StoreError, ValueError) as exc:
                log.error("job %s cannot be loaded: %s", job, exc)
                self.store.jobs.set_state(job, JobState.FAILED, fence=self.fence,
                                          error=f"job cannot be loaded: {exc}")
                continue
            if record.state == JobState.QUEUED:
                self.store.jobs.set_state(job, JobState.RUNNING, fence=self.fence)
            elif record.state == JobState.RUNNING:
                log.warning("job %s: running under Ray without a runner here; starting a new"
                            " Ray run (unfinished trials resume)", job)
            self._started[job] = time.monotonic()
            self.runners[job] = RayJobRunner(
                self.store, job, spec, record.space, self.artifacts,
                uploaded=list(uploaded or []), chief_id=self.chief_id,
                fence=self.fence).start()

    def _forget(self, active: set[str]) -> None:
        """Drop runners whose job ended (or was deleted): a chief that lives for months
        must not keep every finished job's spec, space and thread in memory."""
        for job in [j for j, r in self.runners.items() if j not in active and not r.alive]:
            del self.runners[job]
        for job in [j for j in self._started if j not in active and j not in self.runners]:
            del self._started[job]

    def stop_all(self, wait_s: float = 10.0) -> None:
        """Stop every Ray run of this chief without finalizing (the next chief resumes)."""
        for runner in self.runners.values():
            runner.stop()
        deadline = time.monotonic() + wait_s
        for runner in self.runners.values():
            runner.join(max(0.0, deadline - time.monotonic()))
        self.runners.clear()
        self._started.clear()
