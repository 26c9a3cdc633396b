"""The one module that owns ``tf.distribute``: which strategy a trial trains under.

``auto``: MirroredStrategy over the trial's GPUs when it sees several, OneDeviceStrategy
for one GPU, TensorFlow's default strategy on CPU. ``mirrored``, ``one_device`` and
``default`` force a choice; on a CPU-only machine ``mirrored`` mirrors over the logical
CPU devices (which is how the tests exercise real replication without a GPU).
A gang trial's process (``TF_CONFIG`` naming several workers, written by the worker from
the gang's members) trains under MultiWorkerMirroredStrategy, which TensorFlow lets a
process create once, before anything else runs: ``multi_worker_strategy`` is called
first thing in such a process, and ``pick_strategy`` then returns it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from tunecluster.worker.slots import GPU_MEMORY_ENV

STRATEGIES = ("auto", "mirrored", "one_device", "default")

# One strategy per kind per process: a fresh MirroredStrategy for every trial of a warm
# process reuses the previous one's collective keys, and the next fit fails with
# "Shape mismatch in the collective instance".
_PICKED: dict[str, Any] = {}


# A collective that waits longer than this fails (a peer that vanished without a reset);
# the worker's gang check ends a gang with a lost member much sooner (worker/gang.py).
COLLECTIVE_TIMEOUT_S = float(os.environ.get("TUNECLUSTER_COLLECTIVE_TIMEOUT_S", "300"))


def gang_workers(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The workers ``TF_CONFIG`` names (empty when unset or unreadable)."""
    try:
        config = json.loads(environ.get("TF_CONFIG") or "{}")
        workers = config.get("cluster", {}).get("worker", [])
    except (ValueError, AttributeError):
        return []
    return [str(w) for w in workers] if isinstance(workers, list) else []


def multi_worker_strategy() -> Any | None:
    """MultiWorkerMirroredStrategy over the workers of ``TF_CONFIG`` (None when it names
    fewer than two), created once: call it before anything else uses TensorFlow."""
    if "multi_worker" in _PICKED:
        return _PICKED["multi_worker"]
    if len(gang_workers()) < 2:
        return None
    import tensorflow as tf

    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=COLLECTIVE_TIMEOUT_S)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    _patch_keras_for_multi_worker()
    _PICKED["multi_worker"] = strategy
    return strategy


def _patch_keras_for_multi_worker() -> None:
    """Two places where Keras 3 (3.15) fails under MultiWorkerMirroredStrategy, patched in
    this process only (a gang trial's process trains nothing else):
    - a step's scalar outputs (loss, metric results) are reduced with ``axis=0``, which
      a scalar has not ("Invalid reduction dimension 0 for input with 0 dimensions");
    - the symbolic build before ``fit`` reduces a whole data batch across workers (a
      tuple it cannot convert); it only needs the batch's shapes, which a local replica's
      part of it has.
    """
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_tunecluster_patched", False):
        return
    reduce = trainer.reduce_per_replica
    build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_per_replica(values: Any, strategy: Any, reduction: str = "auto") -> Any:
        if (reduction not in ("auto", "mean")
                or not trainer._collective_all_reduce_multi_worker(strategy)):
            return reduce(values, strategy, reduction)

        def one(value: Any) -> Any:
            if not isinstance(value, tf.distribute.DistributedValues):
                return value
            rank = strategy.experimental_local_results(value)[0].shape.rank
            return strategy.reduce("MEAN", value, axis=0 if rank else None)

        return keras.tree.map_structure(one, values)

    def maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> Any:
        strategy = self._distribute_strategy
        if (iterator is None or strategy is None
                or not trainer._collective_all_reduce_multi_worker(strategy)):
            return build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = keras.tree.map_structure(
                lambda v: (strategy.experimental_local_results(v)[0]
                           if isinstance(v, tf.distribute.DistributedValues) else v),
                next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)
        return None

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer._tunecluster_patched = True


def pick_strategy(requested: str = "auto") -> Any:
    if requested not in STRATEGIES:
        raise ValueError(f"resources.strategy: {requested!r} is not one of {', '.join(STRATEGIES)}")
    if len(gang_workers()) > 1:
        strategy = multi_worker_strategy()
        if strategy is not None:
            return strategy
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
    name = type(strategy).__name__
    if "CollectiveAllReduce" in name:  # the class behind MultiWorkerMirroredStrategy
        name = "MultiWorkerMirroredStrategy"
    return {
        "strategy": name,
        "workers": max(1, len(gang_workers())) if strategy is _PICKED.get("multi_worker") else 1,
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


def lost_a_peer(error: BaseException) -> bool:
    """Whether ``error`` is how TensorFlow ends a gang trial whose peer is gone (its
    coordination service saw a member stop beating, or a collective could not reach it:
    UNAVAILABLE, ABORTED, CANCELLED, DEADLINE_EXCEEDED), anywhere in its chain. Such an
    attempt is retried like one whose worker was lost, never recorded FAILED."""
    if "tensorflow" not in sys.modules:
        return False
    import tensorflow as tf

    kinds = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
             tf.errors.DeadlineExceededError)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def shard_by_data(strategy: Any, dataset: Any) -> Any:
    """Under several workers, each worker keeps every N-th batch of the same pipeline
    (the datasets are in memory: there are no files to shard by), so one epoch sees each
    example once at the same global batch size. Unchanged for other strategies."""
    if "multi_worker" not in _PICKED or strategy is not _PICKED["multi_worker"]:
        return dataset
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
