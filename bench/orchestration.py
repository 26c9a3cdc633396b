"""Orchestration overhead: null trials through tunecluster, stock KerasTuner distributed
and Ray Tune (defaults, and ``reuse_actors=True``), same machine, one run.

    .venv/bin/python bench/orchestration.py [--trials 200] [--ray-trials 50] [--workers 2]
        [--rounds 3] [--ray-default-trials 20]

A null trial does no work, so every millisecond measured is the system's own: handing
the trial out, running it in the place a real trial runs, reporting one epoch, ending.
- tunecluster: the real chief process and ``--workers`` real ``Worker`` processes, each
  with a real trial process behind its pipe (``null_worker.py``): claim, pipe, epoch
  report, finish, all through the real Lua scripts; the cluster is up and warm before
  the job is submitted (``tunecluster up``).
- KerasTuner distributed: its own gRPC mode (``KERASTUNER_TUNER_ID`` /
  ``KERASTUNER_ORACLE_IP`` / ``KERASTUNER_ORACLE_PORT``): a chief process and
  ``--workers`` ``Tuner`` processes whose ``run_trial`` reports one epoch and returns.
  KerasTuner has no warm workers: its workers start with the search.
- Ray Tune 2.x on a local Ray started beforehand with ``--workers`` CPUs: a function
  trainable that reports once, with Ray's defaults, and with ``reuse_actors=True``.

Two windows, the same for every system:
- submit -> results: from handing the search over (tunecluster's submit, starting
  KerasTuner's workers, ``Tuner.fit()``) to every trial's result being recorded;
- steady state: (last trial's end - first trial's start) / (trials - 1), the time per
  trial the system adds once running (with ``--workers`` running side by side), and
  x workers, what each worker spends per trial on the machinery.
Ratios are each system's time over tunecluster's, from this one run (with ``--rounds``,
the systems take turns and each one's median round is kept; every round goes to stderr).
Ray's output (its banners) goes to stdout before the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SPACE = {
    "n_hidden": {"int": [0, 50]},
    "n_neurons": {"int": [1, 100000]},
    "learning_rate": {"float": [1e-5, 1.0], "sampling": "log"},
    "optimizer": {"choice": ["sgd", "adam", "rmsprop"]},
}


def _row(system: str, trials: int, workers: int, window_s: float,
         starts: list[float], ends: list[float]) -> dict[str, Any]:
    """Figures of one system from its window and its trials' start/end times (s)."""
    span = max(ends) - min(starts)
    per = span / max(1, len(ends) - 1)
    return {"system": system, "trials": trials, "workers": workers,
            "submit_to_results_s": round(window_s, 3),
            "steady_ms_per_trial": round(per * 1000, 3),
            "steady_ms_per_trial_per_worker": round(per * 1000 * workers, 3),
            "trials_per_s": round((len(ends) - 1) / span, 1) if span > 0 else None}


def bench_tunecluster(trials: int, workers: int) -> dict[str, Any]:
    from tunecluster.api.submission import PreparedJob, search_space, submit
    from tunecluster.cluster import RedisServer
    from tunecluster.spec import parse_spec
    from tunecluster.store import Store

    spec = parse_spec({"name": "null", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": SPACE},
                       "search": {"algorithm": "random", "objective": "val_loss",
                                  "max_trials": trials}})
    job = PreparedJob(spec, search_space(spec))
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as art:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                           str(ROOT / "bench")])}
        chief = subprocess.Popen([sys.executable, "-m", "tunecluster", "chief", "--redis",
                                  redis_server.url, "--artifacts", art], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs = [subprocess.Popen([sys.executable, str(ROOT / "bench" / "null_worker.py"),
                                   redis_server.url, art], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(workers)]
        store = Store.from_url(redis_server.url)
        try:
            _until(lambda: store.client.get(store.keys.chief_beat) is not None
                   and len(store.workers.live(10)) == workers)
            time.sleep(2.0)  # the chief's worker census sees them; trial processes are up
            roles = {"chief": [chief.pid], "redis": [redis_server.process.pid],
                     "workers": [p.pid for p in procs]}
            cpu_before = _cpu_seconds(roles)
            t_submit = time.time()
            job_id = submit(store, job)
            # Follow the job's event stream (a blocking read) rather than polling the
            # trial records, which would load the cores the measured processes share.
            done, after, deadline = 0, "0-0", time.monotonic() + 600
            while done < trials and time.monotonic() < deadline:
                for event in store.events.read(job_id, after, block_ms=1000, count=1000):
                    after = event.id
                    done += event.type in ("trial_completed", "trial_failed")
            t_results = time.time()
            cpu_after = _cpu_seconds(roles)
            rows = store.jobs.trials(job_id)
        finally:
            for p in [*procs, chief]:
                p.terminate()
            for p in [*procs, chief]:
                p.wait(30)
    if done < trials:
        raise SystemExit(f"tunecluster: {done}/{trials} trials ended")
    starts = [int(r["started"]) / 1000 for r in rows]
    ends = [int(r["finished"]) / 1000 for r in rows]
    row = _row("tunecluster", trials, workers, t_results - t_submit, starts, ends)
    # Where the machine's time goes: CPU per trial of each role, from submit to results
    # (the workers' figure includes their trial processes).
    row["cpu_ms_per_trial"] = {role: round((cpu_after[role] - cpu_before[role]) * 1000
                                           / trials, 3) for role in roles}
    return row


def _cpu_seconds(roles: dict[str, list[int]]) -> dict[str, float]:
    """User + system CPU seconds of each role's processes and their children."""
    import psutil

    totals = {}
    for role, pids in roles.items():
        total = 0.0
        for pid in pids:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += t.user + t.system
        totals[role] = total
    return totals


KT_SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    import keras_tuner as kt

    class NullTuner(kt.RandomSearch):
        def run_trial(self, trial, *args, **kwargs):
            start = time.time()
            score = (hash(trial.trial_id) % 1000) / 1000.0
            self.oracle.update_trial(trial.trial_id, {"val_loss": score}, step=0)
            self.stamps.append((start, time.time()))
            return {"val_loss": score}

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


def bench_kerastuner(trials: int, workers: int) -> dict[str, Any]:
    from tunecluster.cluster import free_port

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "kt_null.py"
        script.write_text(KT_SCRIPT)
        port = str(free_port())
        base = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": port}
        chief = subprocess.Popen([sys.executable, str(script), str(trials), tmp],
                                 env={**base, "KERASTUNER_TUNER_ID": "chief"},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(lambda: _port_open(int(port)), 120)  # its gRPC server is up
        t_submit = time.time()
        procs = [subprocess.Popen([sys.executable, str(script), str(trials), tmp],
                                  env={**base, "KERASTUNER_TUNER_ID": f"tuner{i}"},
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for i in range(workers)]
        stamps: list[list[float]] = []
        for p in procs:
            out, _ = p.communicate(timeout=900)
            stamps += json.loads(out.strip().splitlines()[-1])
        t_results = time.time()
        chief.wait(120)
    return _row("kerastuner-distributed", len(stamps), workers, t_results - t_submit,
                [s for s, _ in stamps], [e for _, e in stamps])


def bench_ray(trials: int, workers: int, reuse_actors: bool) -> dict[str, Any]:
    # before Ray loads: on Linux it otherwise binds and announces the machine's primary
    # address even when told 127.0.0.1; the benchmark stays on loopback
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import tune

    ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
    try:
        def null(config: dict) -> dict:
            start = time.time()
            return {"val_loss": config["x"], "t_start": start, "t_end": time.time()}

        config = tune.TuneConfig(num_samples=trials, metric="val_loss", mode="min",
                                 reuse_actors=reuse_actors)
        tuner = tune.Tuner(null, param_space={"x": tune.uniform(0, 1)}, tune_config=config,
                           run_config=tune.RunConfig(verbose=0,
                                                     storage_path=tempfile.mkdtemp()))
        t0 = time.time()
        grid = tuner.fit()
        window = time.time() - t0
        frame = grid.get_dataframe()
    finally:
        ray.shutdown()
    name = "ray-tune-reuse-actors" if reuse_actors else "ray-tune-default"
    return _row(name, trials, workers, window, list(frame["t_start"]), list(frame["t_end"]))


def _median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose steady-state time is the median of the rounds'."""
    ordered = sorted(rows, key=lambda r: r["steady_ms_per_trial"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds": len(rows)}


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _until(predicate: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(0.05)


def main() -> None:
    # A SIGTERM (timeout, Ctrl-C's cousin) unwinds like an exception, so the Redis server,
    # the chief and the workers this run started are stopped, not left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--ray-trials", type=int, default=50,
                        help="trials for each Ray Tune run (its defaults take seconds each)")
    parser.add_argument("--ray-default-trials", type=int, default=None,
                        help="trials for Ray Tune's defaults (default: --ray-trials)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds of every system; the median is reported")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["kerastuner", "ray-default", "ray-reuse"])
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.rounds):  # interleaved: load from elsewhere hits every system alike
        got = [bench_tunecluster(args.trials, args.workers)]
        if "kerastuner" not in args.skip:
            got.append(bench_kerastuner(args.trials, args.workers))
        if "ray-reuse" not in args.skip:
            got.append(bench_ray(args.ray_trials, args.workers, reuse_actors=True))
        if "ray-default" not in args.skip:
            got.append(bench_ray(args.ray_default_trials or args.ray_trials, args.workers,
                                 reuse_actors=False))
        for r in got:
            print(json.dumps({"round": len(runs.get(r["system"], [])) + 1, **r}),
                  file=sys.stderr, flush=True)
            runs.setdefault(r["system"], []).append(r)
    rows = [_median(rs) for rs in runs.values()]
    ours = rows[0]
    for r in rows:
        r["steady_ratio"] = round(r["steady_ms_per_trial"] / ours["steady_ms_per_trial"], 2)
        # per trial, so runs with different trial counts compare
        r["submit_to_results_ms_per_trial"] = round(
            r["submit_to_results_s"] * 1000 / r["trials"], 2)
        r["submit_to_results_ratio"] = round(
            r["submit_to_results_ms_per_trial"] / ours["submit_to_results_ms_per_trial"], 2)
        print(json.dumps(r), flush=True)
    print(f"tunecluster steady state: {ours['steady_ms_per_trial']:.2f} ms per trial "
          f"({args.workers} workers; {ours['steady_ms_per_trial_per_worker']:.2f} ms of each"
          f" worker's time); submit -> results {ours['submit_to_results_s']:.2f} s for "
          f"{ours['trials']} trials")
    for r in rows[1:]:
        print(f"  {r['system']}: {r['steady_ratio']:.1f}x tunecluster's steady-state time "
              f"per trial, {r['submit_to_results_ratio']:.1f}x its submit -> results per trial")


if __name__ == "__main__":
    main()
