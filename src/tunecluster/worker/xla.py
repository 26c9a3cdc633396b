"""Whether a trial trains with XLA (``train.jit_compile``).

``true`` and ``false`` force it; ``auto`` picks, per device kind, what ``bench/xla.py``
measured faster for a whole trial. Every trial builds a new model, so every trial pays
XLA's compilation again: a faster steady epoch counts only once it repays that.
"""

from __future__ import annotations

from typing import Any, Literal

Setting = Literal["auto"] | bool
DEVICE_KINDS = ("cpu", "gpu")

# What ``auto`` chooses per device kind.
AUTO: dict[str, bool] = {
    # Measured: `bench/xla.py --rounds 3 --epochs 8` (bench/README.md, "XLA (jit_compile)"),
    # TensorFlow 2.21 on this project's 2-core CPU VM, the course's MLPs (digits
    # classifier, diabetes regression with Normalization), 1x32 and 3x256, batch 32 and
    # 256: XLA made every trial 1.8-2.4x slower (geometric mean 2.1x). Compiling costs
    # 0.8-1.2 s more per trial; the steady epoch is 0.77-1.03x today's (geometric mean
    # 0.95x), so XLA repays its compile after 84 epochs at best (digits 3x256, batch 32),
    # after hundreds to tens of thousands or never in the others.
    "cpu": False,
    # Not measured: the GPU hosts lent to this project carry no TensorFlow (bench/README.md,
    # "GPU check"). Conservative choice, the loop as it ran before `auto`: on one GPU a
    # trial runs under OneDeviceStrategy, where Keras' own `jit_compile="auto"` already
    # leaves XLA off ("Disable XLA with tf.distribute", keras Trainer
    # `_resolve_auto_jit_compile`); and the CPU figures show that the per-trial compile
    # dominates trials of these sizes. `bench/xla.py` on a GPU host with TensorFlow
    # prints the figures that would change this.
    "gpu": False,
}


def use_jit_compile(setting: Setting, device_kind: str, replicas: int = 1) -> bool:
    """XLA or not for a trial on ``device_kind`` (``cpu`` | ``gpu``) over ``replicas``.

    ``True`` / ``False`` as given; ``auto``: ``AUTO[device_kind]``, and off under several
    replicas (Keras' own ``auto`` turns XLA off under tf.distribute too).
    """
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"train.jit_compile: {setting!r} is not one of auto, true, false")
    if device_kind not in AUTO:
        raise ValueError(f"device kind {device_kind!r} is not one of {', '.join(DEVICE_KINDS)}")
    if replicas > 1:
        return False
    return AUTO[device_kind]


def device_kind(strategy: Any) -> str:
    """``gpu`` when the strategy trains on a GPU, else ``cpu``. The default strategy
    names no devices (TensorFlow places ops itself, on a GPU when it sees one)."""
    try:
        devices = [str(d) for d in strategy.extended.worker_devices]
    except RuntimeError:
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    return "gpu" if any(":GPU:" in d.upper() for d in devices) else "cpu"


def apply(model: Any, setting: Setting, strategy: Any, *, keep_model_choice: bool = False,
          ) -> bool:
    """Set a compiled model's ``jit_compile`` for ``setting`` on ``strategy``'s devices and
    return what is in effect.

    With ``keep_model_choice`` (a user's own model), ``auto`` keeps a model compiled with
    XLA: its author asked for it, as ``auto`` keeps an author's ``steps_per_execution``.
    Keras may refuse XLA for a model that does not support it (it warns and stays off).
    """
    if setting == "auto" and keep_model_choice and bool(model.jit_compile):
        return True
    replicas = int(strategy.num_replicas_in_sync)
    model.jit_compile = use_jit_compile(setting, device_kind(strategy), replicas)
    return bool(model.jit_compile)
