"""Trial slots: how many trials a worker runs at once, and which GPUs each one sees.

A worker that sees G GPUs runs G // gpus_per_trial trials side by side, each in its own
process pinned with ``CUDA_VISIBLE_DEVICES``; on CPU it runs ``cpu_slots`` (default 1).
GPUs are counted without importing TensorFlow (the worker process never does).
"""

from __future__ import annotations

import os
import shutil
import subprocess


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else nvidia-smi's."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def plan_slots(gpus: list[str], gpus_per_trial: int | None = None,
               cpu_slots: int | None = None) -> list[dict[str, str]]:
    """One environment per slot. GPUs are split into disjoint groups of gpus_per_trial."""
    if not gpus:
        n = cpu_slots or 1
        # Hide GPUs from CPU slots so TensorFlow does not probe for them.
        return [{"CUDA_VISIBLE_DEVICES": "-1"} if "CUDA_VISIBLE_DEVICES" in os.environ else {}
                for _ in range(n)]
    per = gpus_per_trial or len(gpus)
    if per < 1 or per > len(gpus):
        raise ValueError(f"--gpus-per-trial: {per} is not between 1 and the {len(gpus)}"
                         " GPU(s) this worker sees")
    groups = [gpus[i:i + per] for i in range(0, len(gpus) - per + 1, per)]
    if cpu_slots is not None:
        groups = groups[:cpu_slots]
    return [{"CUDA_VISIBLE_DEVICES": ",".join(g),
             "TF_FORCE_GPU_ALLOW_GROWTH": "true"} for g in groups]
