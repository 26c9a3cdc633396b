"""Why the worker stopped a trial's process, or why it ended under it (``loop.py``)."""

from __future__ import annotations

import signal

from tunecluster.errors import TuneclusterError, WorkerLost


class TrialAborted(TuneclusterError, RuntimeError):
    """The worker killed a trial's process: its job was cancelled or it ran too long.
    Not retryable: the trial is recorded final (``state``)."""

    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state, self.reason = state, reason


class GangEnded(TrialAborted):
    """A gang trial's attempt ended elsewhere (recorded by rank 0, released by a member
    whose process failed, or by this worker's check on a lost member): this member's
    process is killed and nothing is recorded from here."""

    def __init__(self, reason: str) -> None:
        super().__init__("", reason)


class ChildDied(WorkerLost, RuntimeError):
    """The trial's process died under the worker (a crash, the OOM killer): the attempt
    is lost and the trial retried, as for any ``WorkerLost``."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        if exitcode is not None and exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:
                name = f"signal {-exitcode}"
            text = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        else:
            text = f"exit code {exitcode}"
        super().__init__(f"trial process crashed: {text}")
