"""Stop means stop: how a chief or a worker process answers SIGTERM and SIGINT.

The handler asks the role to stop (its loops end, a worker kills its trial processes
and hands their trials back) and arms a deadline: a role still running ``STOP_S`` after
the signal, because Redis does not answer what it has to write on the way out, kills
what it started (``before_exit``) and exits at once, with status 0 as after any stop.
What it could not write is what a crash leaves: a worker's trial leases expire and the
chief reaps them; a chief's lock lapses and a standby takes over.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("tunecluster.shutdown")

STOP_S = float(os.environ.get("TUNECLUSTER_STOP_S", "4"))


def on_stop_signal(role: str, stop: Callable[[], None],
                   before_exit: Callable[[], None] = lambda: None,
                   deadline_s: float = STOP_S) -> None:
    """Install the handlers (from the main thread: only it may): ``stop`` on the first
    signal, then ``before_exit`` and exit if the process still runs ``deadline_s``
    later. Must not block: it runs between two bytecodes of whatever the main thread
    was doing, a Redis call that will not return included."""
    armed = threading.Event()

    def deadline() -> None:
        time.sleep(deadline_s)  # a daemon thread: a process that stopped in time is gone
        log.warning("%s: still running %.0f s after the stop signal (Redis not"
                    " answering?): exiting now; what it held expires as after a crash",
                    role, deadline_s)
        try:
            before_exit()
        finally:
            sys.stdout.flush()  # log records are flushed as written
            sys.stderr.flush()
            os._exit(0)

    def handler(signum: int, _frame: object) -> None:
        if armed.is_set():
            return
        armed.set()
        log.info("%s: %s received: stopping", role, signal.Signals(signum).name)
        threading.Thread(target=deadline, name="stop-deadline", daemon=True).start()
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def kill_children() -> None:
    """SIGKILL every process this one started with multiprocessing (a worker's trial
    processes, the chief's evaluation process): nothing of theirs is waited for."""
    for process in mp.active_children():
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):  # exited, or closed, meanwhile
            pass
