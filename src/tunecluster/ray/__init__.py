"""Ray Tune as the alternative scheduler (``scheduler: ray``).

- ``backend``: ``RayJobRunner`` (one job, start to finish, in a thread of the chief) and
  ``RayJobs`` (the chief's hook); importing it does not import Ray.
- ``searcher``: the job's KerasTuner oracle as a Ray Tune ``Searcher``.
- ``trainable``: the native trial runner as a Ray Tune ``Trainable`` (actors reused).
"""

from tunecluster.ray.backend import RayJobRunner, RayJobs

__all__ = ["RayJobRunner", "RayJobs"]
