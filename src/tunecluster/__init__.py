"""tunecluster: distributed hyperparameter tuning for Keras models.

Data flow: ``spec`` (a validated job) -> ``chief`` (one KerasTuner oracle per job)
-> ``store`` (Redis: queues, leases, events) -> ``worker`` (trial runner, strategy)
-> metrics back through ``store`` -> ``chief`` finalizes results.
``cluster`` wires the roles together for a local run; ``api`` is the Python API
(``tunecluster.Client``) and ``keras_tuner`` the drop-in KerasTuner tuners.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "Job", "__version__"]

if TYPE_CHECKING:
    from tunecluster.api import Client, Job


def __getattr__(name: str) -> Any:
    # Lazy: ``import tunecluster`` (the CLI, the roles) stays light.
    if name in ("Client", "Job"):
        from tunecluster import api

        return getattr(api, name)
    raise AttributeError(f"module 'tunecluster' has no attribute {name!r}")
