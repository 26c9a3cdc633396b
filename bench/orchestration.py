"""Orchestration overhead: null trials (no TensorFlow work) through tunecluster, stock
KerasTuner distributed (gRPC chief + workers) and Ray Tune, same machine, same run.

    .venv/bin/python bench/orchestration.py [--trials 200] [--ray-trials 20] [--workers 2]

What is measured, for each system: steady-state hand-out time per trial = (end of the
last trial - start of the first) / trials, with the workers already warm. For
tunecluster also: submit -> first trial claimed, and the chief's decision loop.
tunecluster's null workers are the real ``Worker`` claim loop with the trial process
replaced by an in-process null trial (one epoch report + finish through the same Lua
scripts); KerasTuner's are real ``Tuner`` processes whose ``run_trial`` returns at once.
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

SPACE = {
    "n_hidden": {"int": [0, 50]},
    "n_neurons": {"int": [1, 100000]},
    "learning_rate": {"float": [1e-5, 1.0], "sampling": "log"},
    "optimizer": {"choice": ["sgd", "adam", "rmsprop"]},
}


def bench_tunecluster(trials: int, workers: int) -> dict:
    from tunecluster.client import PreparedJob, search_space, submit
    from tunecluster.cluster import RedisServer
    from tunecluster.spec import parse_spec
    from tunecluster.store import Store

    spec = parse_spec({"name": "null", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": SPACE},
                       "search": {"algorithm": "random", "objective": "val_loss",
                                  "max_trials": trials}})
    job = PreparedJob(spec, search_space(spec))
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as art:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "bench")}
        chief = subprocess.Popen([sys.executable, "-m", "tunecluster", "chief", "--redis",
                                  redis_server.url, "--artifacts", art], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs = [subprocess.Popen([sys.executable, str(ROOT / "bench" / "null_worker.py"),
                                   redis_server.url, art], env=env) for _ in range(workers)]
        store = Store.from_url(redis_server.url)
        try:
            _until(lambda: store.client.get(store.keys.chief_beat) is not None
                   and len(store.workers.live(10)) == workers)
            time.sleep(1.0)
            t_submit = time.time()
            job_id = submit(store, job)
            # Follow the job's event stream (a blocking read) rather than polling the trial
            # records, which would load the 2 cores the measured processes share.
            done, after, deadline = 0, "0-0", time.monotonic() + 600
            while done < trials and time.monotonic() < deadline:
                for event in store.events.read(job_id, after, block_ms=1000):
                    after = event.id
                    done += event.type in ("trial_completed", "trial_failed")
            rows = store.jobs.trials(job_id)
        finally:
            for p in [*procs, chief]:
                p.terminate()
            for p in [*procs, chief]:
                p.wait(10)
    started = sorted(int(r["started"]) for r in rows)
    finished = sorted(int(r["finished"]) for r in rows)
    span_ms = finished[-1] - started[0]
    return {"system": "tunecluster", "trials": trials, "workers": workers,
            "per_trial_ms": span_ms / trials, "trials_per_s": trials / (span_ms / 1000),
            "submit_to_first_claim_ms": started[0] - t_submit * 1000}


KT_SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    import keras_tuner as kt

    class NullTuner(kt.RandomSearch):
        def run_trial(self, trial, *args, **kwargs):
            stamp = time.time()
            self.stamps.append(stamp)
            return {"val_loss": (hash(trial.trial_id) % 1000) / 1000.0}

    def build(hp):
        hp.Int("n_hidden", 0, 50); hp.Int("n_neurons", 1, 100000)
        hp.Float("learning_rate", 1e-5, 1.0, sampling="log")
        hp.Choice("optimizer", ["sgd", "adam", "rmsprop"])
        return None

    tuner = NullTuner(hypermodel=build, objective="val_loss", max_trials=int(sys.argv[1]),
                      directory=sys.argv[2], project_name="null", overwrite=False)
    tuner.stamps = []
    tuner.search()
    if os.environ["KERASTUNER_TUNER_ID"] != "chief":
        print(json.dumps(tuner.stamps))
''')


def bench_kerastuner(trials: int, workers: int) -> dict:
    from tunecluster.cluster import free_port

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "kt_null.py"
        script.write_text(KT_SCRIPT)
        port = str(free_port())
        base = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
        chief = subprocess.Popen([sys.executable, str(script), str(trials), tmp],
                                 env={**base, "KERASTUNER_TUNER_ID": "chief"},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(8)  # the chief imports TensorFlow and starts its gRPC server
        procs = [subprocess.Popen([sys.executable, str(script), str(trials), tmp],
                                  env={**base, "KERASTUNER_TUNER_ID": f"tuner{i}"},
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for i in range(workers)]
        stamps: list[float] = []
        for p in procs:
            out, _ = p.communicate(timeout=900)
            stamps += json.loads(out.strip().splitlines()[-1])
        chief.wait(120)
    stamps.sort()
    span_ms = (stamps[-1] - stamps[0]) * 1000
    n = len(stamps)
    return {"system": "kerastuner-distributed", "trials": n, "workers": workers,
            "per_trial_ms": span_ms / max(1, n - 1), "trials_per_s": (n - 1) / (span_ms / 1000)}


def bench_ray(trials: int, workers: int) -> dict:
    import ray
    from ray import tune

    ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
    try:
        def null(config: dict) -> dict:
            return {"val_loss": config["x"]}

        tuner = tune.Tuner(null, param_space={"x": tune.uniform(0, 1)},
                           tune_config=tune.TuneConfig(num_samples=trials, metric="val_loss",
                                                       mode="min"),
                           run_config=tune.RunConfig(verbose=0,
                                                     storage_path=tempfile.mkdtemp()))
        t0 = time.time()
        tuner.fit()
        span = time.time() - t0
    finally:
        ray.shutdown()
    return {"system": "ray-tune-default", "trials": trials, "workers": workers,
            "per_trial_ms": span * 1000 / trials, "trials_per_s": trials / span}


def _until(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--ray-trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["kerastuner", "ray"])
    args = parser.parse_args()
    rows = [bench_tunecluster(args.trials, args.workers)]
    if "kerastuner" not in args.skip:
        rows.append(bench_kerastuner(args.trials, args.workers))
    if "ray" not in args.skip:
        rows.append(bench_ray(args.ray_trials, args.workers))
    ours = rows[0]["per_trial_ms"]
    for r in rows:
        r["ratio_vs_tunecluster"] = r["per_trial_ms"] / ours
        print(json.dumps(r))
    print(f"tunecluster per-trial hand-out: {ours:.2f} ms; "
          + "; ".join(f"{r['system']} is {r['ratio_vs_tunecluster']:.1f}x slower"
                      for r in rows[1:]))


if __name__ == "__main__":
    main()
