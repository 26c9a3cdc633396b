"""A hook for fault tests, inert unless ``TUNECLUSTER_TEST_STOP_AT`` is set.

``TUNECLUSTER_TEST_STOP_AT=POINT:MARKER`` makes the first process that reaches
``stop_here(POINT)`` write its pid to the file MARKER (created anew: once per marker,
so a replacement process started with the same environment runs on) and stop itself
with SIGSTOP. The test waits for that, then SIGKILLs the process at exactly that moment
instead of racing for a sub-second window. The points: ``finish`` (worker/child.py: a
trial trained, its model written, its outcome not yet recorded) and ``finalize``
(engine/finalize.py: the job just turned ``finalizing``, nothing written yet).

``TUNECLUSTER_TEST_HANG_AT=POINT:MARKER`` makes the first thread that reaches
``hang_here(POINT)`` write its pid to MARKER and block for good, while the process's
other threads run on: a step that never returns. The point: ``chief_tick`` (the start
of the chief's round). Only tests set the variables.
"""

from __future__ import annotations

import os
import signal
import threading

STOP_AT_ENV = "TUNECLUSTER_TEST_STOP_AT"
HANG_AT_ENV = "TUNECLUSTER_TEST_HANG_AT"


def stop_here(point: str) -> None:
    """Stop this process (SIGSTOP) if the variable names ``point`` and its marker file
    does not exist yet; otherwise do nothing."""
    if _first_at(STOP_AT_ENV, point):
        os.kill(os.getpid(), signal.SIGSTOP)


def hang_here(point: str) -> None:
    """Block the calling thread for good if the variable names ``point`` and its marker
    file does not exist yet; otherwise do nothing."""
    if _first_at(HANG_AT_ENV, point):
        threading.Event().wait()


def _first_at(variable: str, point: str) -> bool:
    """Whether ``variable`` names ``point`` and this is the first arrival there (its
    marker file created now, holding this pid)."""
    value = os.environ.get(variable)
    if not value:
        return False
    name, _, marker = value.partition(":")
    if name != point or not marker:
        return False
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False  # once per marker
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True
