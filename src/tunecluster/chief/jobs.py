"""The jobs a chief hosts: a ``HostedJob`` per active job, loaded from Redis.

Loading a job reads its record, parses its spec and, for a ``scheduler: native`` job,
restores its oracle (or seeds a new one from its ``warm_start`` source). A job that
cannot be read or loaded is quarantined (failed with the reason, out of the active
set); one that is no longer active leaves the active set; a queued one becomes running.
This is the one loader of both schedulers: a Ray job is handed to the Ray scheduler as
``HostedJob.loaded()`` (engine/scheduling.py). Every write is fenced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tunecluster.engine.finalize import FinalizeRetry
from tunecluster.engine.oracle_host import OracleHost
from tunecluster.engine.scheduling import LoadedJob
from tunecluster.errors import FATAL_ERRORS, SpecError, StoreError
from tunecluster.spec import parse_spec
from tunecluster.spec.models import JobSpec
from tunecluster.states import JobState, TrialState
from tunecluster.store import Store
from tunecluster.store.fence import Fence

log = logging.getLogger("tunecluster.chief")


@dataclass
class HostedJob:
    id: str
    spec: JobSpec
    host: OracleHost | None
    uploaded: list[str]
    space: dict[str, Any] = field(default_factory=dict)
    exhausted: bool = False
    cancel: bool = False
    failure: str | None = None
    failure_saved: bool = False
    fatal: str = ""  # the KerasTuner fatal error that ended the search (fatal_ends_search)
    dirty: bool = False
    touched: set[str] = field(default_factory=set)
    next_trials_read: float = 0.0  # monotonic time of Chief._finish_jobs' next read of trials
    waiting: str = ""  # why its trials cannot start, as last written to the job record
    finalize_retry: FinalizeRetry = field(default_factory=FinalizeRetry)

    def loaded(self) -> LoadedJob:
        """What a scheduler other than the chief's own round runs the job from."""
        return LoadedJob(self.id, self.spec, self.space, tuple(self.uploaded))


def oracle_failed(hosted: HostedJob, doing: str, exc: BaseException) -> None:
    """The job's oracle raised (KerasTuner's code, or one of ours, on this job's trials
    and space): that job fails with the reason, the chief and the other jobs go on."""
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    hosted.failure = f"the search's oracle failed {doing}: {type(exc).__name__}: {first}"
    hosted.dirty = True
    log.warning("job %s: %s", hosted.id, hosted.failure)


def fatal_ends_search(hosted: HostedJob, state: str | None, fatal: str | None,
                      error: str) -> None:
    """A trial ended ``state``; when it failed with ``fatal``, one of KerasTuner's fatal
    errors (``FATAL_ERRORS``, as its worker recorded it), the search ends at once, failed,
    as KerasTuner's does (the first such error is the reason). The reason starts with the
    error's class, which the drop-in raises."""
    if state != TrialState.FAILED or fatal not in FATAL_ERRORS or hosted.fatal:
        return
    hosted.fatal = fatal
    hosted.failure = error if error.startswith(f"{fatal}: ") else f"{fatal}: {error}"
    hosted.failure_saved, hosted.dirty = False, True
    log.warning("job %s: a trial raised %s: the search ends", hosted.id, fatal)


def load_job(store: Store, job_id: str, fence: Fence) -> HostedJob | None:
    """Job ``job_id`` as the chief hosts it, or None when it is not an active job that
    can be loaded (it is then quarantined, or taken out of the active set). A queued
    job becomes running, whichever scheduler runs it."""
    try:
        record = store.jobs.get(job_id)
    except StoreError as exc:
        if store.jobs.exists(job_id):  # foreign or corrupt: one job's error
            # Logged once: quarantine takes it out of the active set for good
            # (failed with the reason where its keys can take that write).
            log.error("job %s cannot be read, skipped: %s", job_id, exc)
            store.jobs.quarantine(job_id, f"job cannot be read: {exc}", fence)
        else:
            store.jobs.drop_active(job_id, fence)
        return None
    if record.state not in (JobState.QUEUED, JobState.RUNNING, JobState.FINALIZING):
        # Every state change to a final state leaves the active set in the same
        # write: one still there is foreign; not read again on every round.
        store.jobs.drop_active(job_id, fence)
        return None
    try:
        spec = parse_spec(record.spec)
        host, seeded = None, []
        if spec.scheduler == "native":
            host, seeded = load_oracle(store, job_id, spec, record.space)
    except (SpecError, StoreError, ValueError, KeyError) as exc:
        log.error("job %s cannot be loaded: %s", job_id, exc)
        store.jobs.quarantine(job_id, f"job cannot be loaded: {exc}", fence)
        return None
    failure = record.fields.get("failure") or None
    hosted = HostedJob(job_id, spec, host, list(record.files), space=record.space,
                       cancel=record.cancel_requested, failure=failure,
                       failure_saved=failure is not None)
    if seeded:  # a warm start: written with the round that creates the first trial
        hosted.dirty = True
        hosted.touched.update(seeded)
    if record.state == JobState.QUEUED:
        store.jobs.set_state(job_id, JobState.RUNNING, fence=fence)
    return hosted


def load_oracle(store: Store, job_id: str, spec: JobSpec,
                space: dict[str, Any]) -> tuple[OracleHost, list[str]]:
    """The job's persisted oracle, or a new one seeded by its ``warm_start`` source
    (and the ids of the trials seeded now, not yet persisted)."""
    state, trials = store.jobs.oracle_state(job_id)
    warm = None
    if not state and spec.warm_start is not None:
        source = spec.warm_start.from_
        if not store.jobs.exists(source):
            raise StoreError(f"warm_start: job {source!r} no longer exists")
        warm = store.jobs.oracle_state(source)[1]
    host = OracleHost.create(spec, space, state, trials, warm_trials=warm)
    return host, host.seeded if warm else []
