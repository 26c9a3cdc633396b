"""A hook for fault tests, inert unless ``TUNECLUSTER_TEST_STOP_AT`` is set.

``TUNECLUSTER_TEST_STOP_AT=POINT:MARKER`` makes the first process that reaches
``stop_here(POINT)`` write its pid to the file MARKER (created anew: once per marker,
so a replacement process started with the same environment runs on) and stop itself
with SIGSTOP. The test waits for that, then SIGKILLs the process at exactly that moment
instead of racing for a sub-second window. The points: ``finish`` (worker/child.py: a
trial trained, its model written, its outcome not yet recorded) and ``finalize``
(engine/finalize.py: the job just turned ``finalizing``, nothing written yet).
Only tests set the variable.
"""

from __future__ import annotations

import os
import signal

STOP_AT_ENV = "TUNECLUSTER_TEST_STOP_AT"


def stop_here(point: str) -> None:
    """Stop this process (SIGSTOP) if the variable names ``point`` and its marker file
    does not exist yet; otherwise do nothing."""
    value = os.environ.get(STOP_AT_ENV)
    if not value:
        return
    name, _, marker = value.partition(":")
    if name != point or not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # stopped once already
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGSTOP)
