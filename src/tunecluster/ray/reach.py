"""Whether a Ray job's cluster can be reached, and what the job says while it cannot.

A Ray driver cannot outlive its cluster's GCS: Ray hangs the driver's calls, then (after
``gcs_rpc_server_reconnect_timeout_s``, 60 s) ends the whole process. So the chief never
drives Ray in its own process (``driver.py`` runs each Ray run in a child) and watches
the cluster from outside: a TCP connection to the address the operator gave. While it
cannot be reached, the job's record says why (``waiting``, which ``status``, ``watch`` and
the dashboard show) and the job waits; when it answers again, a new Ray run of the job
starts (unfinished trials resume from their checkpoints, as after a chief failover);
after ``TUNECLUSTER_RAY_UNREACHABLE_S`` (600 s) of waiting the job fails with that reason.
A cluster that answers but where ``ray.init`` fails (most often a token it does not
accept: Ray retries that silently for 20 s, then says only "Failed to connect") is
*refused*: the job says so, with the hint, and fails after
``TUNECLUSTER_RAY_REFUSED_S`` (60 s) of refusals rather than waiting the long limit.

``waiting`` has two writers, each for its own jobs: the chief's loop for native jobs
(gang trials short of workers) and ``Waiting`` here for Ray jobs. Both write under the
chief's fence.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime

from tunecluster.store import Store
from tunecluster.store.fence import Fence, Writes

UNREACHABLE_ENV = "TUNECLUSTER_RAY_UNREACHABLE_S"
UNREACHABLE_S = 600.0  # a job waits this long for its Ray cluster, then fails
REFUSED_ENV = "TUNECLUSTER_RAY_REFUSED_S"
REFUSED_S = 60.0  # ... and this long for one that answers but refuses its ray.init
PROBE_TIMEOUT_S = 2.0


def _limit_s(env: str, default: float) -> float:
    value = os.environ.get(env)
    if not value:
        return default
    try:
        limit = float(value)
    except ValueError:
        limit = -1.0
    if not limit >= 0:  # NaN included
        raise ValueError(f"{env}={value!r}: a number of seconds >= 0 is allowed")
    return limit


def unreachable_limit_s() -> float:
    return _limit_s(UNREACHABLE_ENV, UNREACHABLE_S)


def refused_limit_s() -> float:
    return _limit_s(REFUSED_ENV, REFUSED_S)


def probe_target(address: str | None) -> tuple[str, int] | None:
    """The host and port to test for ``address`` (a GCS ``host:port`` or a Ray client
    ``ray://host:port``); None when it cannot be tested (a local Ray, ``auto``)."""
    if not address or address == "auto":
        return None
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def reachable(address: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether Ray at ``address`` accepts connections (True when it cannot be tested)."""
    target = probe_target(address)
    if target is None:
        return True
    try:
        with socket.create_connection(target, timeout=timeout_s):
            return True
    except OSError:
        return False


class Waiting:
    """The ``waiting`` line of one Ray job while its cluster is unreachable or refuses
    its ``ray.init``; each kind of outage has its own limit."""

    def __init__(self, store: Store, job: str, address: str, fence: Fence) -> None:
        self.store, self.job, self.address, self.fence = store, job, address, fence
        self.since: float | None = None  # monotonic: the limit is this process's to keep
        self.line = ""
        self.kind = ""  # unreachable | refused

    @property
    def waiting(self) -> bool:
        return self.since is not None

    def unreachable(self) -> None:
        """Ray cannot be reached (again): say so on the job, once per outage."""
        self._begin("unreachable", "unreachable")

    def refused(self, reason: str) -> None:
        """Ray answers but this chief's ``ray.init`` fails there: say so, with why."""
        self._begin("refused", "refuses this chief", f": {reason}")

    def over(self) -> str | None:
        """The job's error once it has waited past the limit, else None."""
        env, limit = ((REFUSED_ENV, refused_limit_s()) if self.kind == "refused"
                      else (UNREACHABLE_ENV, unreachable_limit_s()))
        if self.since is None or time.monotonic() - self.since < limit:
            return None
        return f"{self.line}: gave up after {limit:g} s ({env})"

    def reached(self) -> None:
        """Ray answers again: the job no longer waits."""
        if self.since is None:
            return
        self.since, self.line, self.kind = None, "", ""
        self._write("")

    def _begin(self, kind: str, what: str, why: str = "") -> None:
        if self.since is not None and self.kind == kind:
            return  # the same outage goes on
        self.since, self.kind = time.monotonic(), kind
        stamp = datetime.fromtimestamp(self.store.now_ms() / 1000, UTC)
        self.line = f"Ray at {self.address} {what} since {stamp:%Y-%m-%d %H:%M:%S} UTC{why}"
        self._write(self.line)

    def _write(self, line: str) -> None:
        self.store.apply(self.store.jobs.stage_waiting(Writes(), self.job, line), self.fence)
