"""The states of a job and of a trial: the one place their names are written.

Both enums are strings (``JobState.QUEUED == "queued"``), so a state read from Redis
compares equal to its member and a member written to Redis or JSON is its name. The
Lua scripts get the names from here too (``lua_constants``), never retyped.

A job moves along this table (``JobState.can_move_to``); ``JobStore.set_state`` refuses
any other move:

    queued      -> running, finalizing, failed, cancelled
    running     -> finalizing, failed, cancelled
    finalizing  -> completed, failed, cancelled, finalizing (redone after a restart)
    completed, failed, cancelled -> queued (resume)
    any         -> deleting (delete; the record goes last)

A trial is READY (queued for a worker), FORMING (a gang gathering its members),
RUNNING (an attempt owns it), then COMPLETED, FAILED or CANCELLED; a reaped attempt
with retries left puts it back to READY. STOPPED is the trial state KerasTuner's
oracle uses for a trial stopped early (Hyperband, early stopping): final too.
"""

from __future__ import annotations

from enum import Enum


class _Name(str, Enum):
    """A ``str`` whose ``str()`` and format are its value on every Python version."""

    __str__ = str.__str__
    __format__ = str.__format__


class JobState(_Name):
    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DELETING = "deleting"  # a job being deleted (its hash is removed last)

    @property
    def is_final(self) -> bool:
        return self in FINAL_JOB_STATES

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_JOB_STATES

    def can_move_to(self, new: JobState) -> bool:
        return new is JobState.DELETING or new in _JOB_MOVES.get(self, ())


class TrialState(_Name):
    READY = "READY"
    FORMING = "FORMING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    STOPPED = "STOPPED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_TRIAL_STATES


class OracleStatus(_Name):
    """The statuses KerasTuner's oracles give their own trials and answers (its
    ``TrialStatus``): the oracle's view of a trial, not the cluster's record of it
    (``TrialState``). Each name is its value, so a member hashes as the plain string."""

    RUNNING = "RUNNING"
    IDLE = "IDLE"
    STOPPED = "STOPPED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    INVALID = "INVALID"


ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.FINALIZING)
FINAL_JOB_STATES = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)
JOB_STATES = tuple(JobState)
OPEN_TRIAL_STATES = (TrialState.READY, TrialState.FORMING, TrialState.RUNNING)
FINAL_TRIAL_STATES = (TrialState.COMPLETED, TrialState.FAILED, TrialState.CANCELLED,
                      TrialState.STOPPED)

_JOB_MOVES: dict[JobState, tuple[JobState, ...]] = {
    JobState.QUEUED: (JobState.RUNNING, JobState.FINALIZING, JobState.FAILED,
                      JobState.CANCELLED),
    JobState.RUNNING: (JobState.FINALIZING, JobState.FAILED, JobState.CANCELLED),
    JobState.FINALIZING: (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED,
                          JobState.FINALIZING),
    JobState.COMPLETED: (JobState.QUEUED,),
    JobState.FAILED: (JobState.QUEUED,),
    JobState.CANCELLED: (JobState.QUEUED,),
}


def lua_constants() -> str:
    """Lua locals ``JOB_QUEUED = 'queued'``, ``TRIAL_READY = 'READY'``, ... for the
    scripts of ``store/``: prepended to a script, they are its only state names."""
    lines = [f"local JOB_{s.name} = '{s.value}'" for s in JobState]
    lines += [f"local TRIAL_{s.name} = '{s.value}'" for s in TrialState]
    return "\n".join(lines) + "\n"


__all__ = ["ACTIVE_JOB_STATES", "FINAL_JOB_STATES", "FINAL_TRIAL_STATES", "JOB_STATES",
           "OPEN_TRIAL_STATES", "JobState", "OracleStatus", "TrialState", "lua_constants"]
