"""XLA (``jit_compile=True``) against today's trial loop, side by side in one run.

    .venv/bin/python bench/xla.py [--rounds 3] [--epochs 6] [--quick]

Trains the course's models through the project's own trial path
(``tunecluster.worker.trial.run_trial`` on a ``JobRuntime`` built from a spec, as a
worker runs it: tf.data pipeline, ``steps_per_execution`` auto, per-epoch checkpoint):

- the classification MLP (Flatten, Dense ReLU layers, softmax) on the embedded digits;
- the regression MLP (Normalization adapted on the training split, Dense ReLU layers,
  Dense(1), mse) on the embedded diabetes data;

each with a small and a larger network (n_hidden x n_neurons) at batch 32 and 256, once
with ``train.jit_compile: false`` (today's loop: Keras' own ``auto``, which is no XLA on
CPU and under a tf.distribute strategy) and once with ``true``. Each round runs every
configuration in both modes, the order alternating between rounds (AB, BA, AB, ...), with
the same seed for both modes. One warm-up trial per mode is discarded first (the
process's first trial pays TensorFlow's own start-up).

Per trial it records what the trial pays: ``trial_s`` = build + fit (tracing and XLA
compilation included; the model save is left out, it does not depend on the mode);
``epoch_ms``, the steady epoch: the median time between the reports of epochs 3 and
later (validation and checkpoint included); ``one_off_s`` = ``trial_s`` minus the epochs
at the steady rate: what tracing and compiling cost (``first_epoch_s`` and
``second_epoch_s`` in the JSON show where it lands). From those, the epochs after which
XLA would repay its extra one-off cost. It prints a table of medians over the rounds and
one JSON line with the ratios XLA / today (below 1: XLA is faster) and the device kind.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (dataset, task, input mode, objective)
DATASETS = {
    "digits": ("classification", "flatten", "val_accuracy"),
    "diabetes": ("regression", "normalize", "val_rmse"),
}
SIZES = {"small": (1, 32), "large": (3, 256)}  # (n_hidden, n_neurons)
BATCHES = (32, 256)
MODES = (False, True)  # jit_compile


class _Clock:
    """A Reporter that keeps the wall-clock time of each epoch's report."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def epoch(self, epoch: int, metrics: Any) -> bool:
        self.times.append(time.time())
        return False


def _runtime(dataset: str, batch: int, epochs: int, jit: bool, root: str) -> Any:
    from tunecluster.spec import parse_spec
    from tunecluster.worker.runtime import JobRuntime

    task, input_mode, objective = DATASETS[dataset]
    spec = parse_spec({
        "name": f"xla-{dataset}",
        "data": {"dataset": dataset, "split": {"valid": 0.2, "test": 0.2, "seed": 42}},
        "model": {"builtin": "mlp", "task": task, "input": input_mode},
        "search": {"objective": objective},
        "train": {"epochs": epochs, "batch_size": batch, "jit_compile": jit},
    })
    return JobRuntime.prepare(f"{dataset}-{batch}-{int(jit)}", spec,
                              {"space": [], "values": {}}, root)


def _one_trial(rt: Any, trial_id: str, n_hidden: int, n_neurons: int, seed: int,
               seen: list[bool]) -> dict[str, float]:
    import keras

    from tunecluster.worker.trial import TrialRequest, run_trial

    keras.utils.set_random_seed(seed)
    clock = _Clock()
    values = {"n_hidden": n_hidden, "n_neurons": n_neurons, "learning_rate": 1e-3,
              "optimizer": "adam"}
    result = run_trial(rt, TrialRequest(trial_id, values), clock)
    t = result.timings
    fit_start = t["build_at"] + t["build_s"]
    # Steady state starts at epoch 3: tf.function's reduce_retracing can retrace once more
    # on epoch 2's first batch (after the last, smaller batch of epoch 1), and under XLA
    # each trace is compiled again (up to 0.2 s more in epoch 2 here).
    gaps = [b - a for a, b in itertools.pairwise(clock.times[1:])]
    epoch_s = statistics.median(gaps)
    trial_s = t["build_s"] + t["fit_s"]
    return {
        "trial_s": trial_s,
        "build_s": t["build_s"],
        "first_epoch_s": clock.times[0] - fit_start,
        "second_epoch_s": clock.times[1] - clock.times[0],
        "epoch_ms": 1000 * epoch_s,
        # what the trial pays beyond its epochs at the steady rate: tracing, compiling
        "one_off_s": trial_s - len(clock.times) * epoch_s,
        "score": result.score,
        "jit_effective": float(seen[-1]),
        "steps_per_execution": float(result.distribution["steps_per_execution"]),
    }


def _break_even(one_off_off: float, one_off_xla: float, epoch_ms_off: float,
                epoch_ms_xla: float) -> int | None:
    """Epochs after which XLA's faster steady epochs repay its extra one-off cost
    (None: its steady epoch is not faster, so never)."""
    saved_ms = epoch_ms_off - epoch_ms_xla
    if saved_ms <= 0:
        return None
    return max(0, math.ceil(1000 * (one_off_xla - one_off_off) / saved_ms))


def _watch_jit(seen: list[bool]) -> None:
    """Record the model's effective ``jit_compile`` after the trial loop tuned it, so the
    table shows what each mode really ran (Keras resolves ``auto`` itself)."""
    from tunecluster.worker import trial

    original = trial._tune_step_overhead

    def wrapped(model: Any, *args: Any, **kwargs: Any) -> None:
        original(model, *args, **kwargs)
        seen.append(bool(model.jit_compile))

    trial._tune_step_overhead = wrapped


def _device_kind() -> str:
    import tensorflow as tf

    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def main() -> None:
    from tunecluster.quiet import import_tensorflow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--quick", action="store_true",
                        help="one configuration, for a dry run of the harness")
    args = parser.parse_args()
    if args.rounds < 1 or args.epochs < 4:
        sys.exit("--rounds must be >= 1 and --epochs >= 4 (steady state from epoch 3)")

    import_tensorflow()
    import tensorflow as tf

    load_start = os.getloadavg()
    t_start = time.perf_counter()
    seen: list[bool] = []
    _watch_jit(seen)
    root = tempfile.mkdtemp(prefix="tunecluster-xla-")
    configs = [(d, s, b) for d in DATASETS for s in SIZES for b in BATCHES]
    if args.quick:
        configs = configs[:1]
    try:
        runtimes = {(d, b, jit): _runtime(d, b, args.epochs, jit, root)
                    for d, _, b in configs for jit in MODES}
        for jit in MODES:  # warm-up, discarded
            _one_trial(runtimes[(configs[0][0], configs[0][2], jit)], "warmup",
                       *SIZES["small"], 0, seen)
        rows: dict[tuple[str, str, int, bool], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for d, s, b in configs:
                for jit in order:
                    rows.setdefault((d, s, b, jit), []).append(_one_trial(
                        runtimes[(d, b, jit)], f"r{r}-{s}", *SIZES[s], r, seen))
                    print(f"round {r + 1}/{args.rounds} {d} {s} batch {b}"
                          f" jit={jit}: {rows[(d, s, b, jit)][-1]['trial_s']:.2f} s",
                          file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def med(key: tuple[str, str, int, bool], field: str) -> float:
        return statistics.median(row[field] for row in rows[key])

    results = []
    for d, s, b in configs:
        off, on = (d, s, b, False), (d, s, b, True)
        results.append({
            "dataset": d, "n_hidden": SIZES[s][0], "n_neurons": SIZES[s][1], "batch": b,
            "steps_per_execution": int(med(off, "steps_per_execution")),
            "jit_effective": [bool(med(off, "jit_effective")), bool(med(on, "jit_effective"))],
            **{f"{f}_{m}": round(med(k, f), 4)
               for f in ("trial_s", "build_s", "first_epoch_s", "second_epoch_s", "epoch_ms",
                         "one_off_s", "score")
               for m, k in (("off", off), ("xla", on))},
            "trial_ratio": round(med(on, "trial_s") / med(off, "trial_s"), 3),
            "epoch_ratio": round(med(on, "epoch_ms") / med(off, "epoch_ms"), 3),
            "break_even_epochs": _break_even(med(off, "one_off_s"), med(on, "one_off_s"),
                                             med(off, "epoch_ms"), med(on, "epoch_ms")),
        })

    def geomean(values: list[float]) -> float:
        return round(math.exp(statistics.fmean(math.log(v) for v in values)), 3)

    load_end = os.getloadavg()
    summary = {
        "device_kind": _device_kind(),
        "tensorflow": tf.__version__,
        "rounds": args.rounds,
        "epochs": args.epochs,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "load_avg_start": [round(x, 2) for x in load_start],
        "load_avg_end": [round(x, 2) for x in load_end],
        "trial_ratio_geomean": geomean([r["trial_ratio"] for r in results]),
        "epoch_ratio_geomean": geomean([r["epoch_ratio"] for r in results]),
        "configs": results,
    }
    print(f"device: {summary['device_kind']}, {args.rounds} rounds x {args.epochs} epochs,"
          f" medians; ratio = XLA / today (< 1: XLA faster)")
    print("| model | batch | steps/call | trial today | trial XLA | ratio | one-off today"
          " | one-off XLA | steady epoch today | steady epoch XLA | ratio | XLA pays off after"
          " | score today / XLA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        even = r["break_even_epochs"]
        print(f"| {r['dataset']} {r['n_hidden']}x{r['n_neurons']} | {r['batch']}"
              f" | {r['steps_per_execution']}"
              f" | {r['trial_s_off']:.2f} s | {r['trial_s_xla']:.2f} s | {r['trial_ratio']:.2f}"
              f" | {r['one_off_s_off']:.2f} s | {r['one_off_s_xla']:.2f} s"
              f" | {r['epoch_ms_off']:.1f} ms | {r['epoch_ms_xla']:.1f} ms"
              f" | {r['epoch_ratio']:.2f} | {'never' if even is None else f'{even} epochs'}"
              f" | {r['score_off']:.3f} / {r['score_xla']:.3f} |")
    print(f"geometric mean of the ratios: trial {summary['trial_ratio_geomean']},"
          f" steady epoch {summary['epoch_ratio_geomean']}; load average"
          f" {load_start[0]:.1f} at start, {load_end[0]:.1f} at end; {summary['wall_s']} s")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
