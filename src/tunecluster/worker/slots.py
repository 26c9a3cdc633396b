"""Trial slots: how many trials a worker runs at once, and which GPUs each one sees.

A worker that sees G GPUs runs G // gpus_per_trial trials side by side, each in its own
process pinned with ``CUDA_VISIBLE_DEVICES``; on CPU it runs ``cpu_slots`` (default 1).
With ``trials_per_gpu`` N > 1 it packs N trials onto each GPU instead (small models
leave most of a GPU idle): G x N slots, each process pinned to one GPU and limited to
its share of that GPU's memory (``GPU_MEMORY_ENV``, applied by ``strategy.py`` through
TensorFlow's logical device configuration before anything touches the GPU).
GPUs are counted without importing TensorFlow (the worker process never does).
"""

from __future__ import annotations

import os
import shutil
import subprocess

# Read by the trial process (strategy.limit_gpu_memory): its GPU memory cap, in MiB.
GPU_MEMORY_ENV = "TUNECLUSTER_GPU_MEMORY_MB"
# Kept back from each packed trial's share: what a process uses on the GPU outside
# TensorFlow's allocator (the CUDA context, cuDNN/cuBLAS workspaces), about 300-500 MiB.
HEADROOM_MB = 512
# A share below this cannot hold a model and its batches: planning refuses it.
MIN_TRIAL_MEMORY_MB = 256


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else nvidia-smi's."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    return [gpu for gpu in _nvidia_smi() if gpu.isdigit()]


def gpu_memory_mb() -> dict[str, int]:
    """Total memory (MiB) of each GPU, by index and by UUID, from nvidia-smi; empty
    when it cannot be read."""
    return _nvidia_smi()


def _nvidia_smi() -> dict[str, int]:
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,memory.total",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, int] = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[2].isdigit():
            found[parts[0]] = found[parts[1]] = int(parts[2])
    return found


def plan_slots(gpus: list[str], gpus_per_trial: int | None = None,
               cpu_slots: int | None = None, trials_per_gpu: int = 1,
               memory_mb: dict[str, int] | None = None) -> list[dict[str, str]]:
    """One environment per slot.

    GPUs are split into disjoint groups of ``gpus_per_trial``; with ``trials_per_gpu``
    N > 1, each GPU carries N slots instead, each capped at ``memory_mb[gpu] / N`` minus
    ``HEADROOM_MB``. ``cpu_slots`` caps the number of slots (``--slots``)."""
    if trials_per_gpu < 1:
        raise ValueError(f"--trials-per-gpu: {trials_per_gpu} must be at least 1")
    if not gpus:
        n = cpu_slots or 1
        # Hide GPUs from CPU slots so TensorFlow does not probe for them.
        return [{"CUDA_VISIBLE_DEVICES": "-1"} if "CUDA_VISIBLE_DEVICES" in os.environ else {}
                for _ in range(n)]
    if trials_per_gpu > 1:
        return _packed(gpus, gpus_per_trial, cpu_slots, trials_per_gpu, memory_mb or {})
    per = gpus_per_trial or len(gpus)
    if per < 1 or per > len(gpus):
        raise ValueError(f"--gpus-per-trial: {per} is not between 1 and the {len(gpus)}"
                         " GPU(s) this worker sees")
    groups = [gpus[i:i + per] for i in range(0, len(gpus) - per + 1, per)]
    if cpu_slots is not None:
        groups = groups[:cpu_slots]
    return [{"CUDA_VISIBLE_DEVICES": ",".join(g),
             "TF_FORCE_GPU_ALLOW_GROWTH": "true"} for g in groups]


def _packed(gpus: list[str], gpus_per_trial: int | None, cpu_slots: int | None,
            per_gpu: int, memory_mb: dict[str, int]) -> list[dict[str, str]]:
    if gpus_per_trial not in (None, 1):
        raise ValueError(f"--trials-per-gpu: {per_gpu} trials share each GPU, so each trial"
                         f" gets one GPU; --gpus-per-trial {gpus_per_trial} conflicts with it")
    slots = []
    for gpu in gpus:
        total = memory_mb.get(gpu)
        if total is None:
            raise ValueError(f"--trials-per-gpu: the memory of GPU {gpu} cannot be read"
                             " (nvidia-smi), so its share cannot be set")
        share = total // per_gpu - HEADROOM_MB
        if share < MIN_TRIAL_MEMORY_MB:
            raise ValueError(f"--trials-per-gpu: {per_gpu} trials on GPU {gpu} ({total} MiB)"
                             f" leave {share} MiB each, below {MIN_TRIAL_MEMORY_MB} MiB")
        # No TF_FORCE_GPU_ALLOW_GROWTH: a memory limit and memory growth exclude each
        # other in TensorFlow, and the limit is what keeps neighbours apart.
        slots += [{"CUDA_VISIBLE_DEVICES": gpu, GPU_MEMORY_ENV: str(share)}
                  for _ in range(per_gpu)]
    # Round-robin over the GPUs, so that a --slots cap spreads trials over all of them.
    order = [slots[g * per_gpu + i] for i in range(per_gpu) for g in range(len(gpus))]
    return order[:cpu_slots] if cpu_slots is not None else order
