"""The Ray scheduler as the chief sees it (``engine/scheduling.Scheduler``): one
``RayJobRunner`` per active ``scheduler: ray`` job.

The chief loads the jobs (``chief/jobs.load_job``: a job that cannot load is
quarantined there, a queued one becomes running) and ticks this scheduler with its Ray
jobs. A Ray job without a runner here (the chief restarted, or took over from another
chief) gets a new Ray run: the oracle resumes from Redis, and the trials the previous
run left unfinished run again before new ones are suggested. A run that saw its job end
says how (``ended``), and the chief finalizes the job as it does a native one. Importing
it does not import Ray.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tunecluster.engine.scheduling import JobEnd, LoadedJob
from tunecluster.ray.backend import RayJobRunner
from tunecluster.store import Store
from tunecluster.store.fence import Fence

log = logging.getLogger("tunecluster.ray")

RESTART_AFTER_S = 10.0  # a chief restarts a job's Ray run at most this often


class RayJobs:
    """The chief's Ray scheduler: one RayJobRunner per active Ray job, started once."""

    name = "ray"

    def __init__(self, store: Store, artifacts_root: str | Path, chief_id: str,
                 fence: Fence | None = None) -> None:
        self.store = store
        self.artifacts = Path(artifacts_root).resolve()
        self.chief_id = chief_id
        # the chief's fence (its lock, its token): every write of the Ray path is under it
        self.fence = fence if fence is not None else store.control.fence(chief_id)
        self.runners: dict[str, RayJobRunner] = {}
        self._started: dict[str, float] = {}

    def tick(self, jobs: Sequence[LoadedJob]) -> None:
        """Start a runner for each of ``jobs`` without a live one (a job's run is
        restarted at most every ``RESTART_AFTER_S``)."""
        self._forget({job.id for job in jobs})
        for job in jobs:
            runner = self.runners.get(job.id)
            if runner is not None:
                if runner.alive or runner.ended is not None:  # running, or to finalize
                    continue
                self.runners.pop(job.id)
            if time.monotonic() - self._started.get(job.id, -math.inf) < RESTART_AFTER_S:
                continue
            if job.id in self._started:
                log.warning("job %s: its Ray run ended without ending the job; starting a"
                            " new Ray run (unfinished trials resume)", job.id)
            self._started[job.id] = time.monotonic()
            self.runners[job.id] = RayJobRunner(
                self.store, job.id, job.spec, job.space, self.artifacts,
                uploaded=list(job.uploaded), chief_id=self.chief_id,
                fence=self.fence).start()

    def ended(self) -> Mapping[str, JobEnd]:
        """The jobs whose Ray run saw the search end, each with how: the chief
        finalizes them (a runner is dropped once its job leaves the active set)."""
        return {job: runner.ended for job, runner in self.runners.items()
                if runner.ended is not None}

    def _forget(self, active: set[str]) -> None:
        """Drop runners whose job ended (or was deleted): a chief that lives for months
        must not keep every finished job's spec, space and thread in memory."""
        for job in [j for j, r in self.runners.items()
                    if j not in active and (not r.alive or r.ended is not None)]:
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
