"""The drop-in's errors of KerasTuner's types, which its users catch.

A trial that raises one of KerasTuner's fatal errors (``kt.errors.FatalTypeError``, ...),
or returns what KerasTuner refuses with one, ends the search at once: the chief fails
the job with a reason that starts with the error's class (``chief/jobs.py``). ``search()``
then raises that KerasTuner class, which is also this cluster's ``JobFailed``, so both
``except kt.errors.FatalTypeError`` and ``except tunecluster.errors.JobFailed`` catch
it. The class is picked by name among KerasTuner's four; nothing read from Redis is run
or unpickled.
"""

from __future__ import annotations

from typing import Any

from keras_tuner.errors import FatalError, FatalRuntimeError, FatalTypeError, FatalValueError

from tunecluster.errors import FATAL_ERRORS, JobFailed, JobNotCompleted, SpecError, not_completed
from tunecluster.states import JobState


class BuildReturnedNoModel(SpecError, FatalTypeError):
    """A build that returns no Keras model: KerasTuner's ``FatalTypeError`` (what its
    users catch), and our one-line ``SpecError`` on the ``hypermodel`` field."""


class SearchFatalError(JobFailed, FatalError):
    """A trial raised KerasTuner's ``FatalError``: the search ended."""


class SearchFatalValueError(JobFailed, FatalValueError):
    """A trial raised KerasTuner's ``FatalValueError`` (or returned a dict without the
    objective): the search ended."""


class SearchFatalTypeError(JobFailed, FatalTypeError):
    """A trial raised KerasTuner's ``FatalTypeError`` (or returned what is no metric):
    the search ended."""


class SearchFatalRuntimeError(JobFailed, FatalRuntimeError):
    """A trial raised KerasTuner's ``FatalRuntimeError``: the search ended."""


_BY_NAME: dict[str, type[JobFailed]] = {
    cls.__bases__[1].__name__: cls for cls in (
        SearchFatalError, SearchFatalValueError, SearchFatalTypeError, SearchFatalRuntimeError)}
assert sorted(_BY_NAME) == sorted(FATAL_ERRORS)


def search_ended(job: str, results: dict[str, Any]) -> JobNotCompleted:
    """The error ``search()`` raises for a job that ended without completing: one of
    KerasTuner's fatal error classes when a trial's fatal error ended it, else
    ``JobFailed`` / ``JobCancelled`` as ``Job.wait()`` raises them."""
    error = results.get("error") or "no trial completed"
    fatal = error.split(":", 1)[0]
    if results["state"] == JobState.FAILED and fatal in _BY_NAME:
        return _BY_NAME[fatal](job, results["state"], error, results)
    return not_completed(job, {**results, "error": error})
