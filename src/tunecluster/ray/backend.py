"""Ray Tune as the alternative scheduler: how one ``scheduler: ray`` job runs.

``RayJobRunner`` drives one job from start to end in a background thread of the chief
(``jobs.RayJobs``, the chief's hook, starts one per Ray job). Each Ray run of the job is
a child process (``driver.py``: a Ray driver whose cluster dies hangs and is then ended
by Ray, which must not be the chief): it connects to Ray (``connect.py``) and runs a
``tune.Tuner`` whose searcher is the job's KerasTuner oracle (``searcher.OracleSearcher``)
and whose trainable is the native trial runner (``trainable.TrialTrainable``).
``RecordsCallback`` writes every trial start, epoch, retry and failure to the job's Redis
records and event stream; ``JobStopper`` ends the Ray run on ``cancel``, on a failed
search, or when another chief took the job over or holds the chief lock. While the Ray
cluster cannot be reached the job waits and says why (``reach.py``); when it is back a
new Ray run starts.

The thread keeps the job's state: every job-state write and the take-over of a run go
under the chief's ``Fence``, so a deposed chief writes none of them; it stops its Ray
run and stands by. When the search is over the thread closes what Tune left open and
says how the job ended (``JobEnd``); the chief finalizes it, as it does a native job.

A new Ray run of a job (after a restart or a take-over) resumes the oracle from Redis
and runs the trials the previous run left unfinished again (resuming from their last
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

from tunecluster.engine.scheduling import JobEnd
from tunecluster.ray.connect import LOCAL, keep_ray_on_loopback, ray_address
from tunecluster.spec.models import JobSpec
from tunecluster.states import JobState, TrialState
from tunecluster.store import Store, codec
from tunecluster.store.fence import Fence, LostLeadership
from tunecluster.store.ray_records import FINAL, RayRecords

log = logging.getLogger("tunecluster.ray")

MAX_CONCURRENT_ENV = "TUNECLUSTER_RAY_MAX_CONCURRENT"  # trials at once (default: fit)
RETRY_S = 5.0  # while Ray is unreachable: how often the chief tests it, and starts a run

_tune_lock = threading.Lock()  # one Ray Tune run at a time per chief process


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
    """Runs one ``scheduler: ray`` job with Ray Tune to its end, then says how it ended
    (``ended``) for the chief to finalize."""

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
        self.fence = fence  # the chief's: every job-state write goes under it
        self.records = RayRecords(store)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.ended: JobEnd | None = None  # how the job ended, once this run saw it end
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

    def run(self) -> JobEnd | None:
        """The whole job up to its finalize: how it ended, or None if stopped before the
        end. Every job-state write is fenced (``LostLeadership`` when this chief no
        longer leads: nothing is written)."""
        from tunecluster.engine.finalize import summarize_errors
        from tunecluster.store.results import build_results

        record = self.store.jobs.get(self.job)
        if record.state == JobState.FINALIZING:  # a previous chief died while finalizing
            return self._end(*self._outcome())
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
        return self._end(state, failure)

    def _drive(self) -> str | None:
        """Ray runs of the job, each in a child process, until Tune ends the search:
        None, or the job's error. While the Ray cluster cannot be reached the job waits
        and says why (``reach.Waiting``), up to ``TUNECLUSTER_RAY_UNREACHABLE_S``; one that
        answers but refuses the chief's ``ray.init``, up to ``TUNECLUSTER_RAY_REFUSED_S``."""
        import redis

        from tunecluster.ray.driver import drive_run
        from tunecluster.ray.reach import Waiting, reachable, refused_limit_s, unreachable_limit_s

        try:
            _refuse_object_store(self.artifacts)
        except ValueError as exc:
            return f"ray: ValueError: {exc}"
        try:
            unreachable_limit_s(), refused_limit_s()
        except ValueError as exc:  # the operator's setting, read again while waiting
            return f"ray: {exc}"
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
            if outcome.kind == "refused":
                log.warning("job %s: Ray at %s refuses this chief: %s", self.job, address,
                            outcome.message)
                waiting.refused(outcome.message)
                if not waiting.over():
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

        # Results live in Redis: no per-trial json/csv/TensorBoard files, no Tune tables.
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 is then silent
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        host = OracleHost.create(self.spec, self.space, *self.store.jobs.oracle_state(self.job))
        resume = self._recover(host)
        scheduler, scheduler_name = make_scheduler(self.spec)
        searcher = OracleSearcher(self.store, self.job, self.spec, self.space, host,
                                  resume=resume, scheduler_name=scheduler_name)
        raw = self.store.raw()
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
                self._end_trial(host, trial, state == TrialState.COMPLETED, row.get("error"))
                continue
            reason = "its Ray run ended (its chief or its Ray cluster went away)"
            attempts, budget = int(row.get("attempts") or 0), int(row.get("max_retries") or 0)
            if state == TrialState.RUNNING and attempts > budget:
                self.records.close(self.job, trial, TrialState.FAILED, reason)
                self._end_trial(host, trial, False, reason)
                continue
            if state == TrialState.RUNNING:
                self.records.retry(self.job, trial, row.get("worker", ""), reason)
            resume.append((trial, values))
        from tunecluster.ray.searcher import oracle_snapshot

        self.records.persist_oracle(self.job, *oracle_snapshot(host))
        return resume

    def _end_trial(self, host: Any, trial: str, completed: bool, message: str | None) -> None:
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

    def _end(self, state: str, error: str | None) -> JobEnd:
        """The search is over: the job becomes finalizing, the trials Tune left open are
        closed, and the chief is told how the job ended (it finalizes, as for a native
        job: ``Chief._finalize``)."""
        from tunecluster.artifacts import MODEL_FILE, trial_dir

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
                       and time.monotonic() < deadline and not self.stop_event.is_set()):
                    time.sleep(0.2)
        self.ended = JobEnd(state, error)
        log.info("job %s: its Ray run ended (%s); the chief finalizes it", self.job, state)
        return self.ended

    def _wait_for_tune_slot(self) -> bool:
        """One Tune run at a time in this process; False if stopped while waiting."""
        while not _tune_lock.acquire(timeout=1.0):
            if self.stop_event.is_set():
                return False
        if self.stop_event.is_set():
            _tune_lock.release()
            return False
        return True

