"""End-to-end tuning of examples/digits.yaml, same space and budget, four ways, one run:

1. tunecluster with 2 workers (embedded Redis, chief, worker processes);
2. KerasTuner ``RandomSearch`` in one process (the course's way);
3. stock KerasTuner distributed (gRPC chief + 2 worker processes);
4. Ray Tune (random search over the same space, default per-trial actors).

    .venv/bin/python bench/tuning.py [--trials 20] [--epochs 8] [--skip ray ...]

Prints wall time, best validation accuracy and the test accuracy of the best model
(evaluated once) for each, and wall-time ratios against tunecluster.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

KT_COMMON = textwrap.dedent('''
    import os, sys, json, time
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras, keras_tuner as kt
    from tunecluster.spec import load_spec_file
    from tunecluster.data import load_splits

    spec = load_spec_file(sys.argv[1], sys.argv[4:])
    s = load_splits(spec.data, spec.model.task)

    def build(hp):
        model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten()])
        for _ in range(hp.Int("n_hidden", 1, 3)):
            model.add(keras.layers.Dense(hp.Int("n_neurons", 16, 256, sampling="log"),
                                         activation="relu"))
        model.add(keras.layers.Dense(10, activation="softmax"))
        lr = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
        opt = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[
            hp.Choice("optimizer", ["sgd", "adam"])](learning_rate=lr)
        model.compile(loss="sparse_categorical_crossentropy", optimizer=opt,
                      metrics=["accuracy"])
        return model

    tuner = kt.RandomSearch(build, objective="val_accuracy", max_trials=spec.search.max_trials,
                            seed=spec.search.seed, directory=sys.argv[2], project_name="digits",
                            overwrite=False)
    t0 = time.time()
    tuner.search(s.x_train, s.y_train, epochs=spec.train.epochs, batch_size=spec.train.batch_size,
                 validation_data=(s.x_valid, s.y_valid), verbose=0,
                 callbacks=[keras.callbacks.EarlyStopping("val_accuracy", patience=3,
                                                          restore_best_weights=True)])
    if "KERASTUNER_ORACLE_IP" not in os.environ:  # one process: the course's way
        best = tuner.oracle.get_best_trials(1)[0]
        try:
            model = tuner.get_best_models(1)[0]
            test = model.evaluate(s.x_test, s.y_test, verbose=0, return_dict=True)["accuracy"]
        except Exception:  # KerasTuner keeps no checkpoint for some trials under Keras 3
            test = None
        print(json.dumps({"best_val": best.score, "test": test}))
''')


def run_tunecluster(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as art:
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "tunecluster", "run",
                              str(ROOT / "examples" / "digits.yaml"), "--workers", "2",
                              "--artifacts", art, "--json",
                              *sum((["--set", o] for o in overrides), [])],
                             capture_output=True, text=True, timeout=1800)
        wall = time.time() - t0
    results = json.loads(out.stdout)
    return {"system": "tunecluster (2 workers)", "wall_s": wall,
            "best_val_accuracy": results["best"]["score"],
            "test_accuracy": results["test"]["accuracy"], "trials": len(results["trials"])}


def run_kt_single(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "kt.py"
        script.write_text(KT_COMMON)
        t0 = time.time()
        out = subprocess.run([sys.executable, str(script), str(ROOT / "examples" / "digits.yaml"),
                              tmp, "-", *overrides], capture_output=True, text=True, timeout=3600)
        wall = time.time() - t0
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"system": "KerasTuner RandomSearch (1 process)", "wall_s": wall,
            "best_val_accuracy": row["best_val"], "test_accuracy": row["test"]}


def run_kt_distributed(overrides: list[str], workers: int = 2) -> dict:
    from tunecluster.cluster import free_port

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "kt.py"
        script.write_text(KT_COMMON)
        base = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": str(free_port())}
        args = [sys.executable, str(script), str(ROOT / "examples" / "digits.yaml"), tmp, "-",
                *overrides]
        t0 = time.time()
        chief = subprocess.Popen(args, env={**base, "KERASTUNER_TUNER_ID": "chief"},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs = [subprocess.Popen(args, env={**base, "KERASTUNER_TUNER_ID": f"tuner{i}"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(workers)]
        for p in procs:
            p.communicate(timeout=3600)
        chief.wait(300)
        wall = time.time() - t0
        scores = [json.loads(f.read_text()).get("score")
                  for f in Path(tmp, "digits").glob("trial_*/trial.json")]
    scores = [x for x in scores if x is not None]
    return {"system": "KerasTuner distributed (chief + 2 workers)", "wall_s": wall,
            "best_val_accuracy": max(scores), "test_accuracy": None, "trials": len(scores)}


def run_ray(overrides: list[str]) -> dict:
    # before Ray loads: on Linux it otherwise binds and announces the machine's primary
    # address even when told 127.0.0.1; the benchmark stays on loopback
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import tune

    from tunecluster.spec import load_spec_file

    spec = load_spec_file(ROOT / "examples" / "digits.yaml", overrides)

    def trainable(config: dict) -> dict:
        import keras as k

        from tunecluster.data import load_splits as ls

        s = ls(spec.data, spec.model.task)
        model = k.Sequential([k.Input((8, 8)), k.layers.Flatten()])
        for _ in range(config["n_hidden"]):
            model.add(k.layers.Dense(config["n_neurons"], activation="relu"))
        model.add(k.layers.Dense(10, activation="softmax"))
        opt = {"sgd": k.optimizers.SGD, "adam": k.optimizers.Adam}[config["optimizer"]](
            learning_rate=config["learning_rate"])
        model.compile(loss="sparse_categorical_crossentropy", optimizer=opt, metrics=["accuracy"])
        hist = model.fit(s.x_train, s.y_train, epochs=spec.train.epochs, batch_size=32,
                         validation_data=(s.x_valid, s.y_valid), verbose=0,
                         callbacks=[k.callbacks.EarlyStopping("val_accuracy", patience=3,
                                                              restore_best_weights=True)])
        return {"val_accuracy": max(hist.history["val_accuracy"]),
                "test_accuracy": model.evaluate(s.x_test, s.y_test, verbose=0)[1]}

    space = {"n_hidden": tune.randint(1, 4), "n_neurons": tune.lograndint(16, 257),
             "learning_rate": tune.loguniform(1e-4, 1e-2),
             "optimizer": tune.choice(["sgd", "adam"])}
    t0 = time.time()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        grid = tune.Tuner(trainable, param_space=space,
                          tune_config=tune.TuneConfig(num_samples=spec.search.max_trials,
                                                      metric="val_accuracy", mode="max"),
                          run_config=tune.RunConfig(verbose=0, storage_path=tempfile.mkdtemp())
                          ).fit()
        best = grid.get_best_result()
    finally:
        ray.shutdown()
    return {"system": "Ray Tune (default actors)", "wall_s": time.time() - t0,
            "best_val_accuracy": best.metrics["val_accuracy"],
            "test_accuracy": best.metrics["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["single", "distributed", "ray"])
    args = parser.parse_args()
    overrides = [f"search.max_trials={args.trials}", f"train.epochs={args.epochs}"]
    rows = [run_tunecluster(overrides)]
    if "single" not in args.skip:
        rows.append(run_kt_single(overrides))
    if "distributed" not in args.skip:
        rows.append(run_kt_distributed(overrides))
    if "ray" not in args.skip:
        rows.append(run_ray(overrides))
    for r in rows:
        r["wall_ratio_vs_tunecluster"] = r["wall_s"] / rows[0]["wall_s"]
        print(json.dumps(r))


if __name__ == "__main__":
    main()
