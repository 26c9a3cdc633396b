"""Ray Tune as the alternative scheduler (``scheduler: ray``).

- ``backend``: ``RayJobRunner`` (one job, start to finish, in a thread of the chief);
  ``jobs``: ``RayJobs`` (the chief's hook); ``connect``: this process's Ray connection.
  Importing them does not import Ray.
- ``searcher``: the job's KerasTuner oracle as a Ray Tune ``Searcher``.
- ``trainable``: the native trial runner as a Ray Tune ``Trainable`` (actors reused).
- ``probe``: the Ray pods' Kubernetes probes (standard library only).

The package imports its submodules lazily, so ``python -m tunecluster.ray.probe`` stays
fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RayJobRunner", "RayJobs"]


def __getattr__(name: str) -> Any:
    if name == "RayJobRunner":
        from tunecluster.ray import backend

        return backend.RayJobRunner
    if name == "RayJobs":
        from tunecluster.ray import jobs

        return jobs.RayJobs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
