"""Connecting the chief's process (or a Ray run's driver) to Ray, once per process.

The address is the operator's (``$RAY_ADDRESS``, also ``tunecluster chief
--ray-address``), else a local Ray started on demand; never one from the job, since Ray's
client protocol unpickles what the server sends. A Ray on loopback is kept on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import threading

from tunecluster.errors import TuneclusterError
from tunecluster.ray.reach import reachable
from tunecluster.spec.models import JobSpec

LOCAL = "local"
NUM_CPUS_ENV = "TUNECLUSTER_RAY_NUM_CPUS"  # CPUs of a local Ray started on demand
LOG_TO_DRIVER_ENV = "TUNECLUSTER_RAY_LOG_TO_DRIVER"  # 1: trial output in the chief's log
# Ray 2.x on Linux replaces 127.0.0.1 with the machine's primary address, and its
# sockets listen there, unless this is in the environment of every Ray process (read
# once, when Ray is imported; the processes a local Ray starts inherit it).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_ray_lock = threading.Lock()  # ray.init is process-wide
_connected: str | None = None  # the address this process's Ray connection was made for


class RayUnavailable(TuneclusterError, RuntimeError):
    """Ray cannot be used for this job (not installed, unreachable, another address)."""


class RayUnreachable(RayUnavailable):
    """``ray.init`` failed: the cluster is down or not there (yet); the job waits."""


class RayRefused(RayUnavailable):
    """``ray.init`` failed although the address accepts connections: most often a token
    the cluster does not accept (or none), else not a Ray there. The job fails soon."""


def ray_address(spec: JobSpec) -> str | None:
    """The operator's Ray cluster (``$RAY_ADDRESS`` of the chief), None for a local Ray.
    A job cannot choose it (``ray.address`` is a spec error): a submitter could otherwise
    point the chief at a Ray server of their own, whose client protocol unpickles."""
    return os.environ.get("RAY_ADDRESS") or None


def is_local(address: str | None) -> bool:
    """Whether ``address`` is a Ray on this machine's loopback (None: one started here;
    "auto" may be any cluster this machine belongs to)."""
    if not address:
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host.strip("[]") in LOOPBACK_HOSTS


def keep_ray_on_loopback(address: str | None) -> None:
    """Before Ray is imported: a local Ray (and a driver of a loopback Ray) stays on
    127.0.0.1. An operator's explicit setting wins; a remote cluster is left alone."""
    if is_local(address):
        for name, value in LOOPBACK_ENV.items():
            os.environ.setdefault(name, value)


def connect_ray(address: str | None) -> str:
    """Connect this process to Ray once; returns the address ("local" for on-demand)."""
    global _connected
    keep_ray_on_loopback(address)
    try:
        import ray
    except ImportError:
        raise RayUnavailable("scheduler: ray needs Ray Tune: pip install 'tunecluster[ray]'"
                             ) from None
    want = address or LOCAL
    with _ray_lock:
        if ray.is_initialized():
            if _connected not in (None, want):
                raise RayUnavailable(f"this chief is connected to Ray at {_connected},"
                                     f" not {want} (one Ray per chief)")
            return want
        quiet = {"log_to_driver": os.environ.get(LOG_TO_DRIVER_ENV, "0") == "1",
                 "logging_level": logging.WARNING}
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(num_cpus=int(os.environ.get(NUM_CPUS_ENV) or os.cpu_count() or 1),
                         include_dashboard=False, **quiet)
        except Exception as exc:  # noqa: BLE001 - reported as the job's error
            raise _init_failed(address, want, exc) from None
        _connected = want
        return want


def _init_failed(address: str | None, want: str, exc: Exception) -> RayUnavailable:
    """Why ``ray.init`` failed, as the job's one line."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if address and reachable(address):  # Ray answers there, yet will not have us
        token = _token_refused(exc)
        if token:
            return RayRefused(f"the cluster does not accept this chief's Ray token ({token});"
                              " the chief needs RAY_AUTH_MODE=token and the cluster's"
                              " RAY_AUTH_TOKEN in its environment")
        hint = (" (a cluster with token authentication needs its RAY_AUTH_TOKEN, and"
                " RAY_AUTH_MODE=token, in the chief's environment)"
                if isinstance(exc, ConnectionError) else "")
        return RayRefused(f"ray.init: {first}{hint}")
    kind = RayUnreachable if address else RayUnavailable
    return kind(f"cannot start or reach Ray at {want}: {first}")


def _token_refused(exc: BaseException | None) -> str:
    """Ray's words for a rejected token, from what ``ray.init`` raised (its "Failed to
    connect" carries the GCS client's last error as its cause); '' if none."""
    while exc is not None:
        for line in str(exc).splitlines():
            at = min((line.find(m) for m in ("Unauthenticated", "InvalidAuthToken")
                      if m in line), default=-1)
            if at >= 0:  # up to Ray's link to its docs
                return line[at:].split("http", 1)[0].rstrip(" (:;.,")[:200]
        exc = exc.__cause__ or exc.__context__
    return ""
