"""Mixed precision: when to train in float16 (the output layers stay float32)."""

from __future__ import annotations

from typing import Any

MIN_COMPUTE_CAPABILITY = (7, 0)  # Volta and newer have tensor cores for float16


def wants_mixed_precision(setting: str, compute_capabilities: list[tuple[int, int]]) -> bool:
    """``on``/``off`` as given; ``auto`` = on when every visible GPU is >= 7.0."""
    if setting == "on":
        return True
    if setting == "off" or not compute_capabilities:
        return False
    return all(cc >= MIN_COMPUTE_CAPABILITY for cc in compute_capabilities)


def visible_compute_capabilities() -> list[tuple[int, int]]:
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        cc = details.get("compute_capability")
        if cc:
            capabilities.append(tuple(cc))
    return capabilities


def apply_policy(enabled: bool) -> str:
    """Set Keras' global dtype policy (before the model is built) and return its name."""
    import keras

    name = "mixed_float16" if enabled else "float32"
    keras.mixed_precision.set_global_policy(name)
    return name


def policy_for(setting: str) -> str:
    return apply_policy(wants_mixed_precision(setting, visible_compute_capabilities()))


def describe() -> dict[str, Any]:
    import keras

    return {"dtype_policy": keras.mixed_precision.global_policy().name}
