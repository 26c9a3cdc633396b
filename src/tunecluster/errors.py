"""The kinds of error tunecluster distinguishes (see STYLE: errors have kinds).

- ``SpecError``: a job, an override or a CLI argument is invalid; nothing was queued.
- ``TrialFailed``: the trial itself is broken (model code raised, NaN loss); no retry.
- ``WorkerLost``: the process running a trial vanished; retried within the job's budget.
- ``StoreError``: the control plane holds something we cannot read (foreign or corrupt data).
"""


class TuneclusterError(Exception):
    """Base of every error tunecluster raises on purpose."""


class SpecError(TuneclusterError, ValueError):
    """A job spec (or override) is invalid. ``str()`` is one line naming the field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class TrialFailed(TuneclusterError):
    """The trial cannot succeed as written: it is recorded FAILED without retry."""


class WorkerLost(TuneclusterError):
    """The trial's process died; the chief may retry the trial elsewhere."""


class StoreError(TuneclusterError):
    """Data in Redis is missing, foreign or malformed."""


class ArtifactsError(TuneclusterError, ValueError):
    """The artifacts root is unusable as given: a URL of an unknown kind, a key that
    would leave the root. ``str()`` names the value and what is allowed."""
