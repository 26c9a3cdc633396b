"""The chief's hook for ``scheduler: ray`` jobs: one ``RayJobRunner`` per active Ray job.

A chief that finds a Ray job ``running`` without a runner of its own (it restarted, or
took over from another chief) starts a new Ray run of the job (``backend.py``): the
oracle resumes from Redis, and the trials the previous run left unfinished run again
before new ones are suggested. Importing it does not import Ray.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from tunecluster.ray.backend import RayJobRunner
from tunecluster.states import JobState
from tunecluster.store import Store, codec
from tunecluster.store.fence import Fence

log = logging.getLogger("tunecluster.ray")

RESTART_AFTER_S = 10.0  # a chief restarts a job's Ray run at most this often
TICK_S = 1.0  # how often the chief's hook looks for Ray jobs without a runner


class RayJobs:
    """The chief's side: one RayJobRunner per active ``scheduler: ray`` job, started once."""

    def __init__(self, store: Store, artifacts_root: str | Path, chief_id: str,
                 fence: Fence | None = None) -> None:
        self.store = store
        self.artifacts = Path(artifacts_root).resolve()
        self.chief_id = chief_id
        # the chief's fence (its lock, its token): every write of the Ray path is under it
        self.fence = fence if fence is not None else store.control.fence(chief_id)
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
        for job, scheduler in zip(active, self.store.jobs.field(active, "scheduler"),
                                  strict=True):
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
