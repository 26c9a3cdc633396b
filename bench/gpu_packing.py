"""Trials per hour with 1, 2, 4 and 8 trial processes sharing one GPU (the course's MLP).

The lent GPU machines carry PyTorch and JAX but no TensorFlow (and the TensorFlow GPU
wheel is too big to carry there), so this measures the packing with Keras 3 on its JAX
backend: the same Keras model code, the same search space, each trial process limited to
its share of the GPU's memory (``XLA_PYTHON_CLIENT_MEM_FRACTION``, as a worker with
``--trials-per-gpu N`` limits each TensorFlow trial process through a logical device's
memory limit). Each process trains random trials back to back (build, compile, fit 5
epochs with validation, batch 32, digits) and counts those finished inside one window
that starts for every process at once, after their imports.

    KERAS_BACKEND=jax python bench/gpu_packing.py --per-gpu 1,2,4,8 --window 45
    python bench/gpu_packing.py --platform cpu --per-gpu 1 --window 45   # the CPU line
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

EPOCHS, BATCH = 5, 32


def child(seed: int) -> None:
    import random

    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = digits.data.astype("float32") / 16.0, digits.target
    x_train, x_valid, y_train, y_valid = train_test_split(x, y, test_size=0.2,
                                                          random_state=42, stratify=y)
    rng = random.Random(seed)
    print("ready", flush=True)
    window_end = float(sys.stdin.readline())  # every process gets the same window
    done, scores, seconds = 0, [], []
    while True:
        start = time.time()
        if start >= window_end:
            break
        model = keras.Sequential([keras.Input((64,))])
        for _ in range(rng.randint(1, 3)):
            model.add(keras.layers.Dense(rng.randrange(16, 257, 16), activation="relu"))
        model.add(keras.layers.Dense(10, activation="softmax"))
        lr = 10 ** rng.uniform(-4, -2)
        opt = keras.optimizers.Adam(lr) if rng.random() < 0.5 else keras.optimizers.SGD(lr)
        model.compile(loss="sparse_categorical_crossentropy", optimizer=opt,
                      metrics=["accuracy"])
        hist = model.fit(x_train, y_train, epochs=EPOCHS, batch_size=BATCH, verbose=0,
                         validation_data=(x_valid, y_valid))
        if time.time() <= window_end:  # only trials finished inside the window count
            done += 1
            scores.append(max(hist.history["val_accuracy"]))
            seconds.append(time.time() - start)
    print(json.dumps({"trials": done, "best": max(scores, default=None),
                      "trial_s": float(np.median(seconds)) if seconds else None,
                      "device": str(keras.backend.backend()) + ":" + _device()}), flush=True)


def _device() -> str:
    import jax

    return jax.devices()[0].platform


def _gpu_sample() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"


def run(k: int, window: float, platform: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / k:.3f}", "JAX_PLATFORMS": platform,
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, __file__, "--child", "--seed", str(i)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env) for i in range(k)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    start = time.time()
    end = start + window
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"{end}\n")
        p.stdin.flush()
    time.sleep(window / 2)
    sample = _gpu_sample() if platform != "cpu" else "n/a"
    rows = [json.loads(p.communicate(timeout=window + 600)[0].strip().splitlines()[-1])
            for p in procs]
    trials = sum(r["trials"] for r in rows)
    return {"per_gpu": k, "platform": platform, "window_s": window, "trials": trials,
            "trials_per_hour": round(trials * 3600 / window),
            "trial_s_median": round(sorted(r["trial_s"] or 0 for r in rows)[len(rows) // 2], 2),
            "best_val_accuracy": max((r["best"] or 0) for r in rows),
            "gpu_util_mem_mid_window": sample, "device": rows[0]["device"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-gpu", default="1,2,4,8")
    parser.add_argument("--window", type=float, default=45.0)
    parser.add_argument("--platform", default="cuda", help="cuda or cpu (JAX_PLATFORMS)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.seed)
        return
    base = None
    for k in (int(v) for v in args.per_gpu.split(",")):
        row = run(k, args.window, args.platform)
        base = base or row["trials_per_hour"]
        row["vs_1"] = round(row["trials_per_hour"] / base, 2) if base else None
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
