"""Ray Tune as the alternative scheduler (``scheduler: ray``).

- ``backend``: ``RayJobRunner`` (one job, start to finish, in a thread of the chief) and
  ``RayJobs`` (the chief's hook); importing it does not import Ray.
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
    if name in __all__:
        from tunecluster.ray import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
