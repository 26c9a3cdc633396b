"""A trial ended by its artifacts store, not by its own code: retried, not failed.

A checkpoint or model write that the artifacts directory refuses (read-only, full, an
I/O error, a volume that lost its permissions for a while) says nothing about the
trial's hyperparameters. Recorded as the trial's failure, it failed good trials, and
whole jobs with them, during a storage hiccup (found by the soak's ``artifacts_refuse``
fault). Like a Redis outage, it costs the trial no retry when the store comes back soon:
the attempt waits up to ``STORAGE_WAIT_S`` for the store to take a write, then is
released for a retry that resumes from the last checkpoint. A store that stays broken
spends the attempt, and so does a trial refused more than ``FREE_STORAGE_RETRIES``
times (a directory of its own that never takes writes while the probe's does): a
store that never takes them fails its trials, with the reason, once their retries
are spent.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("tunecluster.worker")

STORAGE_WAIT_ENV = "TUNECLUSTER_STORAGE_WAIT_S"
STORAGE_WAIT_S = 60.0
# how many times a trial's attempt is given back for a refused write; later ones spend it
FREE_STORAGE_RETRIES = 3
STORE_REFUSED = "the artifacts store refused a write"  # the reason's start, as recorded
# errors of the device or the file system itself, whatever the file
_DEVICE = {errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT}
# errors of access: the store's when the file is under its root
_ACCESS = {errno.EPERM, errno.EACCES}


def storage_wait_s() -> float:
    try:
        return max(0.0, float(os.environ.get(STORAGE_WAIT_ENV, STORAGE_WAIT_S)))
    except ValueError:
        return STORAGE_WAIT_S


def storage_error(exc: BaseException, root: str | Path) -> OSError | None:
    """The store's own I/O error behind ``exc`` (itself, or what caused it: Keras and
    NumPy wrap some), or None when the trial failed for another reason."""
    base = Path(root).resolve()
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            if cause.errno in _DEVICE:
                return cause
            if cause.errno in _ACCESS and _under(cause.filename, base):
                return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _under(filename: object, base: Path) -> bool:
    if not isinstance(filename, (str, os.PathLike)):
        return False
    try:
        return Path(filename).resolve().is_relative_to(base)
    except (OSError, ValueError):
        return False


def wait_until_writable(directory: Path, wait_s: float, poll_s: float = 1.0) -> bool:
    """Whether ``directory`` takes a write (a file created and removed) within
    ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    probe = directory / f".write-probe-{os.getpid()}"
    while True:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(poll_s)
