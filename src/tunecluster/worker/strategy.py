"""The one module that owns ``tf.distribute``: which strategy a trial trains under.

``auto``: MirroredStrategy over the trial's GPUs when it sees several, OneDeviceStrategy
for one GPU, TensorFlow's default strategy on CPU. ``mirrored``, ``one_device`` and
``default`` force a choice; on a CPU-only machine ``mirrored`` mirrors over the logical
CPU devices (which is how the tests exercise real replication without a GPU).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tunecluster.worker.slots import GPU_MEMORY_ENV

STRATEGIES = ("auto", "mirrored", "one_device", "default")

# One strategy per kind per process: a fresh MirroredStrategy for every trial of a warm
# process reuses the previous one's collective keys, and the next fit fails with
# "Shape mismatch in the collective instance".
_PICKED: dict[str, Any] = {}


def pick_strategy(requested: str = "auto") -> Any:
    if requested not in STRATEGIES:
        raise ValueError(f"resources.strategy: {requested!r} is not one of {', '.join(STRATEGIES)}")
    if requested not in _PICKED:
        _PICKED[requested] = _make_strategy(requested)
    return _PICKED[requested]


def _make_strategy(requested: str) -> Any:
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if requested == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy(devices=gpus)
        if len(gpus) == 1:
            return tf.distribute.OneDeviceStrategy(gpus[0])
        return tf.distribute.get_strategy()
    if requested == "mirrored":
        devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if requested == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def describe(strategy: Any, global_batch: int) -> dict[str, Any]:
    """What a trial reports about how it was distributed."""
    replicas = int(strategy.num_replicas_in_sync)
    try:
        devices = [str(d) for d in strategy.extended.worker_devices]
    except RuntimeError:  # the default strategy places ops wherever TensorFlow chooses
        devices = []
    return {
        "strategy": type(strategy).__name__,
        "replicas": replicas,
        "devices": devices,
        "global_batch_size": global_batch,
        "per_replica_batch_size": max(1, global_batch // replicas),
    }


def limit_gpu_memory(environ: Mapping[str, str] = os.environ, tf: Any = None) -> int | None:
    """Cap this trial process's GPU memory at ``$TUNECLUSTER_GPU_MEMORY_MB`` (set per
    slot when several trials share a GPU, ``slots.plan_slots``): one logical device per
    visible GPU with that ``memory_limit``. Must run before TensorFlow touches a GPU,
    so the trial process calls it first thing. Returns the cap (None: no cap asked)."""
    raw = environ.get(GPU_MEMORY_ENV, "").strip()
    if not raw:
        return None
    try:
        limit = int(raw)
        if limit < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"{GPU_MEMORY_ENV}: {raw!r} is not a whole number of MiB > 0") from None
    if tf is None:
        from tunecluster.quiet import import_tensorflow

        import_tensorflow()
        import tensorflow as tf
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.set_logical_device_configuration(
            gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
    return limit
