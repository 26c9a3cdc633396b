"""The seam between the chief and a scheduler: the job the chief loaded, and what every
scheduler offers the chief.

The chief does what all schedulers share, once: it loads each active job
(``chief/jobs.load_job``: the record read and checked, the spec parsed, a job that
cannot load quarantined, a queued job moved to running), holds the lock whose fence
every write goes under, finalizes each job whose search ended (``JobEnd``: results,
the exported model, the final state, with its retries) and steps down. A scheduler runs
the trials of the jobs whose ``scheduler`` names it and says when one has ended. The
native scheduler is the chief's own round (the oracle, the trial queue, the inbox);
``ray/jobs.RayJobs`` is the Ray scheduler. A new scheduler implements ``Scheduler``
and is ticked by the chief beside them (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tunecluster.spec.models import JobSpec


@dataclass(frozen=True)
class LoadedJob:
    """An active job as the chief loaded it: what a scheduler needs to run it."""

    id: str
    spec: JobSpec
    space: dict[str, Any]
    uploaded: tuple[str, ...]


@dataclass(frozen=True)
class JobEnd:
    """How a scheduler's run of a job ended: the job's final state to finalize it to
    (``JobState`` completed, failed or cancelled) and, when failed, why."""

    state: str
    error: str | None = None


@runtime_checkable
class Scheduler(Protocol):
    """What the chief calls on a scheduler, from its own loop, only while it leads."""

    name: str  # the ``scheduler`` value of the jobs it runs

    def tick(self, jobs: Sequence[LoadedJob]) -> None:
        """Run (or go on running) ``jobs``: this scheduler's active jobs, loaded. A job
        missing from ``jobs`` ended, was deleted or could not load: let it go."""

    def stop_all(self) -> None:
        """The chief steps down or stops: stop every run without finalizing it, so that
        the next chief resumes each job."""

    def ended(self) -> Mapping[str, JobEnd]:
        """The jobs whose run ended, each with how, for the chief to finalize. A job
        stays here (and is not run again) until the chief's finalize takes it out of
        the active set."""
