"""The kinds of error tunecluster distinguishes (see STYLE: errors have kinds).

- ``SpecError``: a job, an override or a CLI argument is invalid; nothing was queued.
- ``TrialFailed``: the trial itself is broken (model code raised, NaN loss); no retry.
- ``WorkerLost``: the process running a trial vanished; retried within the job's budget.
- ``StoreError``: the control plane holds something we cannot read (foreign or corrupt data).
- ``JobFailed`` / ``JobCancelled``: a job waited for ended without completing.

Every error tunecluster raises on purpose is a ``TuneclusterError`` (classes defined in
upper layers subclass these, keeping a builtin base such as ``ValueError`` where callers
catch that), and each carries its behaviour as class attributes: ``exit_code``, the CLI's
exit status for it (``cli.common.handle_errors`` reads it), and ``retryable``, whether
the work it interrupted may run again and succeed (a trial's process that reports a
retryable error is ``lost`` and its trial retried elsewhere; any other ends it FAILED).

``ExitCode`` is every exit status of the CLI, in one place.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar

from tunecluster.states import JobState


class ExitCode(IntEnum):
    """The exit status of every ``tunecluster`` command (the README's CLI section lists
    them). A command that waits for a job exits with the code of the job's end."""

    OK = 0  # done; a waited-for job completed
    ERROR = 1  # any other error (a missing job, unreadable data in Redis, ...)
    USAGE = 2  # bad input: a job file, an override, an argument; nothing was queued
    JOB_FAILED = 3
    JOB_CANCELLED = 4
    TIMED_OUT = 5  # --timeout passed before the job ended (it keeps running)
    UNREACHABLE = 6  # Redis (the cluster's control plane) did not answer
    INTERRUPTED = 130  # Ctrl-C: the job `run` started was cancelled

    @classmethod
    def for_state(cls, state: str) -> ExitCode:
        """The code for a job that ended in ``state``."""
        return {JobState.COMPLETED: cls.OK, JobState.FAILED: cls.JOB_FAILED,
                JobState.CANCELLED: cls.JOB_CANCELLED}.get(state, cls.ERROR)


class TuneclusterError(Exception):
    """Base of every error tunecluster raises on purpose.

    ``exit_code``: the CLI's exit status when it ends a command; ``retryable``: whether
    the work it interrupted may be tried again (no: the input or the trial is at fault);
    ``label``: the word the CLI's one stderr line starts with.
    """

    exit_code: ClassVar[ExitCode] = ExitCode.ERROR
    retryable: ClassVar[bool] = False
    label: ClassVar[str] = "error"


class SpecError(TuneclusterError, ValueError):
    """A job spec (or override) is invalid. ``str()`` is one line naming the field."""

    exit_code = ExitCode.USAGE
    label = "spec error"

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class TrialFailed(TuneclusterError):
    """The trial cannot succeed as written: it is recorded FAILED without retry.
    ``fatal`` names the KerasTuner fatal error (``FATAL_ERRORS``) it is, when it is one:
    the search then ends at once, as KerasTuner's does."""

    def __init__(self, message: str = "", fatal: str = "") -> None:
        super().__init__(message)
        self.fatal = fatal


# KerasTuner's fatal errors (``keras_tuner.errors``): a trial that raises one, or returns
# what KerasTuner would refuse with one, ends the whole search at once instead of
# failing that trial only. Named here (no import: this module sits below KerasTuner's
# users); the chief reads the name a worker recorded, the drop-in raises that class.
FATAL_ERRORS = ("FatalError", "FatalValueError", "FatalTypeError", "FatalRuntimeError")


def fatal_kind(exc: BaseException) -> str:
    """Which of ``FATAL_ERRORS`` ``exc`` is (its most specific), or "" when none."""
    if isinstance(exc, TrialFailed):
        return exc.fatal
    for cls in type(exc).__mro__:
        if cls.__module__.split(".")[0] == "keras_tuner" and cls.__name__ in FATAL_ERRORS:
            return cls.__name__
    return ""


class WorkerLost(TuneclusterError):
    """The trial's attempt was lost (its process died, its lease expired, a gang member
    went): the trial may run again elsewhere, within the job's retry budget."""

    retryable = True


class StoreError(TuneclusterError):
    """Data in Redis is missing, foreign or malformed."""


class RefusedMove(StoreError):
    """A state change the lifecycle does not make from the state Redis holds now: the
    writer's view is stale (the record moved since it was read)."""


class ArtifactsError(TuneclusterError, ValueError):
    """The artifacts root is unusable as given: a URL of an unknown kind, a key that
    would leave the root. ``str()`` names the value and what is allowed."""


class JobNotCompleted(TuneclusterError):
    """A job that was waited for ended without completing (``Job.wait()`` raises it).

    ``state`` is the job's final state, ``error`` the job's own one-line reason (or
    None) and ``results`` its results document, as ``wait(raise_on_failure=False)``
    returns it."""

    def __init__(self, job: str, state: str, error: str | None,
                 results: dict[str, Any] | None = None) -> None:
        self.job, self.state, self.error, self.results = job, state, error, results
        super().__init__(f"job {job} {state}" + (f": {error}" if error else ""))


class JobFailed(JobNotCompleted, RuntimeError):
    """The job ended ``failed`` (its trials kept failing, or the chief gave up on it); a
    ``RuntimeError`` too, which KerasTuner's search raises for trials that kept failing."""

    exit_code = ExitCode.JOB_FAILED


class JobCancelled(JobNotCompleted):
    """The job ended ``cancelled``."""

    exit_code = ExitCode.JOB_CANCELLED


class WaitTimeout(TuneclusterError, TimeoutError):
    """Waiting for a job gave up after the caller's timeout; the job keeps running (and
    may be waited for again)."""

    exit_code = ExitCode.TIMED_OUT
    retryable = True


def not_completed(job: str, results: dict[str, Any]) -> JobNotCompleted:
    """The exception for a final job that did not complete."""
    kind = {JobState.FAILED: JobFailed, JobState.CANCELLED: JobCancelled}.get(
        results["state"], JobNotCompleted)
    return kind(job, results["state"], results.get("error"), results)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (300 characters at most), as an error is
    recorded where one line is kept (a job's or a trial's reason)."""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
