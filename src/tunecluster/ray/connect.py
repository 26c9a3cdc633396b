"""Connecting the chief's process (or a Ray run's driver) to Ray, once per process.

The address is the operator's (``$RAY_ADDRESS``, also ``tunecluster chief
--ray-address``), else a local Ray started on demand; never one from the job, since Ray's
client protocol unpickles what the server sends. A Ray on loopback is kept on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import threading

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


class RayUnavailable(RuntimeError):
    """Ray cannot be used for this job (not installed, unreachable, another address)."""


class RayUnreachable(RayUnavailable):
    """``ray.init`` failed: the cluster is down or not there (yet); the job waits."""


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
            hint = ("" if address is None or os.environ.get("RAY_AUTH_MODE") else
                    " (a cluster with token authentication needs RAY_AUTH_MODE=token and"
                    " RAY_AUTH_TOKEN in the chief's environment)")
            kind = RayUnreachable if address else RayUnavailable
            raise kind(f"cannot start or reach Ray at {want}: "
                       f"{str(exc).strip().splitlines()[0][:300]}{hint}") from None
        _connected = want
        return want
