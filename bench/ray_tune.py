"""examples/digits.yaml with ``scheduler: ray`` vs plain Ray Tune defaults, one Ray, one run.

1. tunecluster, ``scheduler: ray``: a chief (embedded Redis, no native worker) drives Ray
   Tune with the job's KerasTuner oracle as searcher, warm reused actors and every
   epoch recorded in Redis; then the test split once and the export.
2. plain Ray Tune: a function trainable with the same model and search space
   (``tune.Tuner`` defaults: random search, a fresh actor per trial, as many trials at
   once as the cluster has CPUs), reporting ``val_accuracy`` every epoch.

Both run on the same Ray head (started here with ``--num-cpus``), one after the other.

    .venv/bin/python bench/ray_tune.py [--trials 8] [--epochs 8] [--cpus 2]

Prints wall time and best validation accuracy of each, and the wall-time ratio
(plain Ray Tune / tunecluster). The tunecluster time runs from submit to the job's
end (it includes evaluating the best model on the test split and exporting it).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Ray's token authentication with a token of our own; set before Ray is imported.
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray on Linux otherwise binds and announces the
# machine's primary address even when told 127.0.0.1; the benchmark stays on loopback.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
os.environ.update(RAY_ENV)


def start_ray_head(cpus: int, temp: str) -> tuple[subprocess.Popen, str]:
    from tunecluster.cluster.redis_server import free_port

    port = free_port()
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
           f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats",
           f"--port={port}", f"--temp-dir={temp}", f"--ray-client-server-port={free_port()}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **RAY_ENV})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                time.sleep(2)
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("Ray head did not start")


def run_tunecluster(address: str, overrides: list[str], art: str) -> dict:
    from tunecluster.api.submission import prepare_job, submit, wait
    from tunecluster.cluster import LocalCluster
    from tunecluster.store import Store

    with LocalCluster(workers=0, artifacts=art, env={**RAY_ENV, "RAY_ADDRESS": address}) as c:
        store = Store.from_url(c.url)
        job = prepare_job(ROOT / "examples" / "digits.yaml", ["scheduler=ray", *overrides])
        t0 = time.time()
        results = wait(store, submit(store, job), timeout_s=3600)
        wall = time.time() - t0
    assert results["state"] == "completed", results.get("error")
    return {"system": "tunecluster, scheduler: ray", "wall_s": round(wall, 1),
            "best_val_accuracy": results["best"]["score"],
            "test_accuracy": results["test"]["accuracy"], "trials": len(results["trials"])}


def run_plain_ray(address: str, overrides: list[str]) -> dict:
    import ray
    from ray import tune

    from tunecluster.spec import load_spec_file

    spec = load_spec_file(ROOT / "examples" / "digits.yaml", overrides)

    def trainable(config: dict) -> None:
        import keras as k

        from tunecluster.data import load_splits

        s = load_splits(spec.data, spec.model.task)
        model = k.Sequential([k.Input(s.input_shape), k.layers.Flatten()])
        for _ in range(config["n_hidden"]):
            model.add(k.layers.Dense(config["n_neurons"], activation="relu"))
        model.add(k.layers.Dense(s.num_classes, activation="softmax"))
        opt = {"sgd": k.optimizers.SGD, "adam": k.optimizers.Adam}[config["optimizer"]](
            learning_rate=config["learning_rate"])
        model.compile(loss="sparse_categorical_crossentropy", optimizer=opt, metrics=["accuracy"])

        class Report(k.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                tune.report({"val_accuracy": float(logs["val_accuracy"])})

        model.fit(s.x_train, s.y_train, epochs=spec.train.epochs,
                  batch_size=spec.train.batch_size, validation_data=(s.x_valid, s.y_valid),
                  verbose=0, callbacks=[Report(), k.callbacks.EarlyStopping(
                      "val_accuracy", patience=spec.train.early_stopping.patience)])

    space = {"n_hidden": tune.randint(1, 4), "n_neurons": tune.lograndint(16, 257),
             "learning_rate": tune.loguniform(1e-4, 1e-2),
             "optimizer": tune.choice(["sgd", "adam"])}
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        t0 = time.time()
        grid = tune.Tuner(trainable, param_space=space,
                          tune_config=tune.TuneConfig(num_samples=spec.search.max_trials,
                                                      metric="val_accuracy", mode="max"),
                          run_config=tune.RunConfig(verbose=0, storage_path=tempfile.mkdtemp())
                          ).fit()
        wall = time.time() - t0
        best = grid.get_best_result(scope="all")
    finally:
        ray.shutdown()
    return {"system": "plain Ray Tune (defaults)", "wall_s": round(wall, 1),
            "best_val_accuracy": best.metrics["val_accuracy"], "test_accuracy": None,
            "trials": len(grid)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray head")
    args = parser.parse_args()
    overrides = [f"search.max_trials={args.trials}", f"train.epochs={args.epochs}"]
    temp = tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp")
    proc, address = start_ray_head(args.cpus, temp)
    try:
        with tempfile.TemporaryDirectory() as art:
            rows = [run_tunecluster(address, overrides, art), run_plain_ray(address, overrides)]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"wall_ratio_plain_ray_over_tunecluster":
                      round(rows[1]["wall_s"] / rows[0]["wall_s"], 2)}))


if __name__ == "__main__":
    main()
