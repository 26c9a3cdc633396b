"""The Python API: ``Client`` (a cluster's control plane) and ``Job`` (one job's handle).

The CLI is a thin layer over ``Client``; ``tunecluster.keras_tuner`` (the drop-in
KerasTuner tuners) submits its searches through it.
"""

from tunecluster.api.client import Client, Job

__all__ = ["Client", "Job"]
