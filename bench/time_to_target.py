"""Time to a target score (issue 27, point 6): tunecluster's searches on 2 local workers
against in-process peers, side by side in one run, several seeds.

    .venv/bin/python bench/time_to_target.py [--seeds 3] [--budget-s 30] [--target 0.97 ...]
        [--epochs 9] [--only tc-asha kt-hyperband ...] [--quick] [--json] [--log-dir DIR]

The task is ``examples/digits.yaml`` (the course's MLP on the embedded 8x8 digits; its
space mixes clearly bad configurations, SGD at small learning rates, with good ones),
``train.epochs`` = ``--epochs``, no early stopping, objective ``val_accuracy`` (max),
search seed = the run's seed. Configurations (``--only`` picks some):

- ``tc-random``, ``tc-hyperband``, ``tc-asha``, ``tc-tpe``, ``tc-tpe-asha``, ``tc-pbt``:
  tunecluster's embedded cluster (``LocalCluster``: Redis, a chief, 2 workers), up and
  warm before the clock (a warm-up job ran first, as on a ``tunecluster up`` cluster).
  The clock starts before ``prepare_job``; trial ends and epoch reports are read from the
  job's event stream and stamped with their stream id (Redis' clock, ms). ASHA: rungs at
  1, 3, 9 epochs (factor 3); Hyperband: KerasTuner's oracle, factor 3; TPE: 10 random
  trials first; ASHA over TPE: those rungs, new configurations from TPE over the first
  rung (10 random first, a BOHB-like search); PBT: 4 members, exploit and explore after
  every epoch, the bottom 25% copying the top.
- ``kt-hyperband``: ``keras_tuner.Hyperband`` in one process (factor 3, ``max_epochs`` =
  ``--epochs``), the same model (``tunecluster.models.builtin.build_mlp``) and splits.
- ``optuna-tpe-sha``: an Optuna study in one process, ``TPESampler(seed)`` with
  ``SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)``, one report per epoch.
- ``ray-asha``: Ray Tune on a local Ray of 2 CPUs (started, and one trial run, before any
  clock): random search (``BasicVariantGenerator(random_state=seed)``), the
  ``ASHAScheduler`` (grace period 1 epoch, factor 3, ``max_t`` = ``--epochs``), 2 trials
  at once, ``reuse_actors=True``, a function trainable reporting every epoch. Its trial
  ends and epochs are stamped in the driver as Tune sees them (a Tune ``Callback``).

The peers run in one helper process started (TensorFlow imported, the data loaded, one
model fitted) before any clock; their clock starts before the tuner or study is made.
Every run lasts ``--budget-s`` (the search is then cancelled / stopped); runs go one at a
time, configurations in a rotated order per seed. A trial's score is its best epoch's
val_accuracy, counted when the trial ends (a tunecluster trial as COMPLETED, a peer's
trial when its ``fit`` returns, a pruned Optuna trial included). Per configuration: the
median over seeds of the time until the best score so far reaches ``--target`` ("not
reached" when fewer than half the seeds reached it within the budget), the same from
epoch reports (the first epoch at the target, before its trial ends), and the median best
score at the budget; ratios against the best peer configuration of the same run. Several
``--target`` values: one table each, from the same runs (the first is the stated one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tunecluster.store.codec import finite_or_none

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "digits.yaml"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TC = {
    "tc-random": ["search.algorithm=random"],
    "tc-hyperband": ["search.algorithm=hyperband", "search.hyperband_factor=3",
                     "search.hyperband_iterations=100"],
    "tc-asha": ["search.algorithm=asha", "search.asha_min_epochs=1", "search.asha_factor=3"],
    "tc-tpe": ["search.algorithm=tpe"],
    "tc-tpe-asha": ["search.algorithm=asha", "search.asha_min_epochs=1", "search.asha_factor=3",
                    "search.asha_sampler=tpe"],
    "tc-pbt": ["search.algorithm=pbt", "search.pbt_population=4", "search.pbt_interval=1",
               "search.pbt_quantile=0.25"],
}
PEERS = ("kt-hyperband", "optuna-tpe-sha", "ray-asha")
CONFIGS = (*TC, *PEERS)
LABELS = {
    "tc-random": "tunecluster random (2 workers)",
    "tc-hyperband": "tunecluster Hyperband (2 workers)",
    "tc-asha": "tunecluster ASHA (2 workers)",
    "tc-tpe": "tunecluster TPE (2 workers)",
    "tc-tpe-asha": "tunecluster ASHA over TPE (2 workers)",
    "tc-pbt": "tunecluster PBT (2 workers)",
    "kt-hyperband": "KerasTuner Hyperband (1 process)",
    "optuna-tpe-sha": "Optuna TPE + SuccessiveHalvingPruner (1 process)",
    "ray-asha": "Ray Tune ASHA, reuse_actors (2 CPUs)",
}
RESULT = "TTT-RESULT "  # the peer helper's answer lines start with this


def base_overrides(epochs: int, seed: int) -> list[str]:
    return [f"train.epochs={epochs}", "train.early_stopping=null",
            "search.objective=val_accuracy", "search.max_trials=5000", f"search.seed={seed}"]


# ---------------------------------------------------------------- tunecluster side

def _stamp(event_id: str, t0: float) -> float:
    return int(event_id.split("-")[0]) / 1000.0 - t0


def run_tunecluster(store: Any, config: str, seed: int, args: argparse.Namespace) -> dict:
    from tunecluster.api.submission import prepare_job, submit
    from tunecluster.store.results import build_results

    ends: list[list[float]] = []
    epochs: list[list[float]] = []
    failed, error, after, final = 0, None, "0-0", False
    t0 = time.time()
    job = submit(store, prepare_job(SPEC, [*base_overrides(args.epochs, seed), *TC[config]]))

    def take(events: list) -> None:
        nonlocal failed, error, after, final
        for ev in events:
            after = ev.id
            t = _stamp(ev.id, t0)
            if t > args.budget_s:
                continue
            if ev.type == "trial_completed" and finite_or_none(ev.data.get("score")) is not None:
                ends.append([t, finite_or_none(ev.data["score"])])
            elif ev.type == "trial_failed":
                failed += 1
                error = error or ev.data.get("error")
            elif ev.type == "epoch":
                value = finite_or_none((ev.data.get("metrics") or {}).get("val_accuracy"))
                if value is not None:
                    epochs.append([t, value])
            elif ev.type == "job_state" and ev.data.get("state") in (
                    "completed", "failed", "cancelled"):
                final = True
                if ev.data.get("state") == "failed":
                    error = ev.data.get("error") or error or "job failed"

    while not final:
        left = args.budget_s - (time.time() - t0)
        if left <= 0:
            break
        take(store.events.read(job, after, block_ms=max(1, int(min(0.5, left) * 1000)),
                               count=1000))
    store.jobs.request_cancel(job)  # the budget is spent: stop the search, free the workers
    deadline = time.time() + 120
    while store.jobs.get(job).state not in ("completed", "failed", "cancelled"):
        if time.time() > deadline:
            error = error or "the cancelled job did not end within 120 s"
            break
        time.sleep(0.2)
    take(store.events.read(job, after, count=100_000))  # stamped in time, read late
    results = build_results(store.jobs, job)
    return {"ends": ends, "epochs": epochs, "failed": failed, "error": error,
            "job": job, "state": results["state"], "trials": len(results["trials"])}


def warm_up(store: Any, trials: int = 4) -> None:
    """The workers' trial processes import TensorFlow and train before any clock."""
    from tunecluster.api.submission import prepare_job, submit

    job = submit(store, prepare_job(SPEC, ["train.epochs=1", "search.max_trials=50",
                                           "search.objective=val_accuracy"]))
    done, after, deadline = 0, "0-0", time.time() + 300
    while done < trials and time.time() < deadline:
        for ev in store.events.read(job, after, block_ms=500, count=1000):
            after = ev.id
            done += ev.type == "trial_completed"
    store.jobs.request_cancel(job)
    while store.jobs.get(job).state not in ("completed", "failed", "cancelled"):
        if time.time() > deadline:
            raise RuntimeError("the warm-up job did not end")
        time.sleep(0.2)
    if done < trials:
        raise RuntimeError(f"the warm-up job completed fewer than {trials} trials")


# ---------------------------------------------------------------- the peers' process

def ray_peer(space: dict, build: Any, fit: Any, ended: Any) -> Any:
    """Ray Tune ASHA as a Ray user runs it: a local Ray (started here, before any clock,
    with one warm-up trial), random search, ASHA stopping, 2 trials at once, reused
    actors. Returns ``run(run, seed, epochs)``; ``ended(run, score)`` counts a trial's end
    as the other peers' are counted."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only, as the tests
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False, _node_ip_address="127.0.0.1")
    params: dict[str, Any] = {}
    for name, hp in space.items():
        if hp.kind == "int":
            low, high = hp.int_
            params[name] = (tune.lograndint if hp.sampling == "log" else tune.randint)(
                low, high + 1)
        elif hp.kind == "float":
            params[name] = (tune.loguniform if hp.sampling == "log" else tune.uniform)(
                *hp.float_)
        else:
            params[name] = tune.choice(list(hp.choice))

    def trainable(config: dict) -> None:
        import keras

        class Report(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                tune.report({"val_accuracy": float((logs or {})["val_accuracy"])})

        keras.backend.clear_session()
        fit(build(config), config["epochs"], [Report()])

    def run_ray(run: dict | None, seed: int, epochs: int) -> None:
        class Clock(tune.Callback):
            def __init__(self) -> None:
                self.best: dict[str, float] = {}

            def on_trial_result(self, iteration: int, trials: list, trial: Any,
                                result: dict, **info: Any) -> None:
                value = finite_or_none(result.get("val_accuracy"))
                if value is None or run is None:
                    return
                self.best[trial.trial_id] = max(value, self.best.get(trial.trial_id, value))
                t = time.time() - run["t0"]
                if t <= run["budget"]:
                    run["epochs"].append([t, value])

            def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                                  **info: Any) -> None:
                if run is not None:
                    ended(run, self.best.get(trial.trial_id))

            def on_trial_error(self, iteration: int, trials: list, trial: Any,
                               **info: Any) -> None:
                if run is not None:
                    run["failed"] += 1

        budget = run["budget"] - (time.time() - run["t0"]) if run else None
        tuner = tune.Tuner(
            trainable, param_space={**params, "epochs": epochs},
            tune_config=tune.TuneConfig(
                metric="val_accuracy", mode="max", num_samples=1 if run is None else 100_000,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                        grace_period=1, reduction_factor=3),
                search_alg=BasicVariantGenerator(random_state=seed),
                max_concurrent_trials=2, reuse_actors=True, time_budget_s=budget),
            run_config=tune.RunConfig(verbose=0, callbacks=[Clock()],
                                      storage_path=tempfile.mkdtemp(prefix="ttt-ray-")))
        tuner.fit()

    run_ray(None, 0, 1)  # warm: Ray's workers and their first trace before any clock
    return run_ray


def peer_server() -> None:
    """Reads one JSON request per line on stdin, answers one ``RESULT`` line each."""
    import keras
    import keras_tuner as kt
    import optuna

    from tunecluster.data import load_splits
    from tunecluster.models.builtin import build_mlp
    from tunecluster.spec import load_spec_file

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec_file(SPEC)
    s = load_splits(spec.data, spec.model.task)
    space = spec.model.hyperparameters

    def build(values: dict) -> Any:
        return build_mlp(values, input_shape=s.input_shape, task="classification",
                         input_mode="flatten", label_kind=s.label_kind,
                         num_classes=s.num_classes)

    def fit(model: Any, epochs: int, callbacks: list, **kwargs: Any) -> list[float]:
        hist = model.fit(s.x_train, s.y_train, epochs=epochs, batch_size=32, verbose=0,
                         validation_data=(s.x_valid, s.y_valid), callbacks=callbacks, **kwargs)
        return [float(v) for v in hist.history.get("val_accuracy", [])]

    fit(build({}), 1, [])  # warm: the first fit of a process traces more than later ones

    class Clock(keras.callbacks.Callback):
        """Stamps each epoch's val_accuracy; stops training once the budget is spent."""

        def __init__(self, run: dict, report: Any = None) -> None:
            super().__init__()
            self.run, self.report, self.pruned = run, report, False

        def __deepcopy__(self, memo: dict) -> Any:  # KerasTuner copies callbacks per trial
            return self

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            t = time.time() - self.run["t0"]
            value = finite_or_none((logs or {}).get("val_accuracy"))
            if value is not None and t <= self.run["budget"]:
                self.run["epochs"].append([t, value])
            if self.report is not None and value is not None:
                self.report.report(value, epoch + 1)
                if self.report.should_prune():
                    self.pruned = self.model.stop_training = True
            if t > self.run["budget"]:
                self.model.stop_training = True

    class BudgetSpent(Exception):
        pass

    def ended(run: dict, score: float | None) -> bool:
        t = time.time() - run["t0"]
        if score is not None and t <= run["budget"]:
            run["ends"].append([t, score])
        return t > run["budget"]

    def hyperband(run: dict, seed: int, epochs: int, tmp: str) -> None:
        hps = kt.HyperParameters()
        for name, hp in space.items():
            if hp.kind == "int":
                hps.Int(name, *hp.int_, sampling=hp.sampling or "linear")
            elif hp.kind == "float":
                hps.Float(name, *hp.float_, sampling=hp.sampling or "linear")
            else:
                hps.Choice(name, hp.choice)

        class Timed(kt.Hyperband):
            def on_trial_end(self, trial: Any) -> None:
                super().on_trial_end(trial)
                done = self.oracle.get_trial(trial.trial_id)
                run["failed"] += done.status == "FAILED"
                if ended(run, finite_or_none(done.score)):
                    raise BudgetSpent

        tuner = Timed(lambda hp: build(hp.values), objective="val_accuracy", max_epochs=epochs,
                      factor=3, hyperband_iterations=100, seed=seed, hyperparameters=hps,
                      directory=tmp, project_name="kt", overwrite=True)
        try:
            tuner.search(s.x_train, s.y_train, epochs=epochs, batch_size=32, verbose=0,
                         validation_data=(s.x_valid, s.y_valid), callbacks=[Clock(run)])
        except BudgetSpent:
            pass

    def tpe_sha(run: dict, seed: int, epochs: int) -> None:
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))

        def objective(trial: Any) -> float:
            values = {}
            for name, hp in space.items():
                if hp.kind == "int":
                    values[name] = trial.suggest_int(name, *hp.int_, log=hp.sampling == "log")
                elif hp.kind == "float":
                    values[name] = trial.suggest_float(name, *hp.float_,
                                                       log=hp.sampling == "log")
                else:
                    values[name] = trial.suggest_categorical(name, hp.choice)
            keras.backend.clear_session()
            clock = Clock(run, trial)
            scores = fit(build(values), epochs, [clock])
            score = max(scores) if scores else None
            if ended(run, score):
                study.stop()
            if clock.pruned:
                raise optuna.TrialPruned
            return score if score is not None else float("nan")

        study.optimize(objective, n_trials=100_000)

    run_ray = ray_peer(space, build, fit, ended) if "--with-ray" in sys.argv else None
    for line in sys.stdin:
        req = json.loads(line)
        keras.utils.set_random_seed(req["seed"])
        run = {"t0": time.time(), "budget": req["budget"], "ends": [], "epochs": [],
               "failed": 0, "error": None}
        try:
            with tempfile.TemporaryDirectory() as tmp:
                if req["config"] == "kt-hyperband":
                    hyperband(run, req["seed"], req["epochs"], tmp)
                elif req["config"] == "ray-asha":
                    if run_ray is None:
                        raise RuntimeError("the peers' process was started without Ray")
                    run_ray(run, req["seed"], req["epochs"])
                else:
                    tpe_sha(run, req["seed"], req["epochs"])
        except Exception as exc:  # noqa: BLE001 - reported in the table, not hidden
            run["error"] = f"{type(exc).__name__}: {exc}"
        run.pop("t0")
        print(RESULT + json.dumps(run), flush=True)


class Peers:
    def __init__(self, log: Path, with_ray: bool) -> None:
        self.log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, __file__, "--peer-server",
                                      *(["--with-ray"] if with_ray else [])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)

    def run(self, config: str, seed: int, args: argparse.Namespace) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"config": config, "seed": seed, "epochs": args.epochs,
                                          "budget": args.budget_s}) + "\n")
        for line in self.proc.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
        self.log.flush()
        tail = Path(self.log.name).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the peers' process ended (exit {self.proc.wait()}): {tail}")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def cluster_cpu_s(cluster: Any) -> float:
    """CPU seconds (user + system) the cluster's processes have used so far: Redis, the
    chief, the workers and their trial processes (what the idle cluster costs the peers)."""
    import psutil

    procs = [p.pid for p in cluster.chiefs + cluster.workers]
    if cluster.redis is not None and cluster.redis.process is not None:
        procs.append(cluster.redis.process.pid)
    total = 0.0
    for pid in procs:
        try:
            proc = psutil.Process(pid)
            for q in [proc, *proc.children(recursive=True)]:
                times = q.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


# ---------------------------------------------------------------- figures

def first_at(points: list[list[float]], target: float) -> float | None:
    return min((t for t, v in points if v >= target), default=None)


def summarize(config: str, runs: list[dict], target: float) -> dict:
    times = [first_at(r["ends"], target) for r in runs]
    epoch_times = [first_at(r["epochs"], target) for r in runs]
    bests = [max((v for _, v in r["ends"]), default=None) for r in runs]

    def median_time(values: list[float | None]) -> float | None:
        m = statistics.median([math.inf if v is None else v for v in values] or [math.inf])
        return None if math.isinf(m) else m

    scored = [b for b in bests if b is not None]
    return {"config": config, "label": LABELS[config], "runs": len(runs),
            "reached": sum(t is not None for t in times),
            "time_to_target_s": median_time(times),
            "time_to_target_epoch_s": median_time(epoch_times),
            "best_at_budget": statistics.median(scored) if scored else None,
            "trials_ended": statistics.median([len(r["ends"]) for r in runs] or [0]),
            "per_seed_s": times, "per_seed_best": bests,
            "failed_trials": sum(r["failed"] for r in runs),
            "errors": sorted({r["error"] for r in runs if r.get("error")})}


def table(rows: list[dict], args: argparse.Namespace, target: float) -> str:
    peers = [r for r in rows if r["config"] in PEERS and r["time_to_target_s"] is not None]
    best_peer = min(peers, key=lambda r: r["time_to_target_s"], default=None)

    def seconds(x: float | None) -> str:
        return "not reached" if x is None else f"{x:.1f} s"

    out = [f"target val_accuracy >= {target}, budget {args.budget_s:g} s per run,"
           f" {args.epochs} epochs max, seeds {args.seed_list}",
           "", "| configuration | reached | time to target (median) | vs best peer |"
           " first epoch at target (median) | best at budget (median) | trials ended"
           " per run | per seed (s) | failures |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "n/a"
        if best_peer is not None and r["time_to_target_s"] is not None:
            ratio = f"{r['time_to_target_s'] / best_peer['time_to_target_s']:.2f}x"
        per_seed = ", ".join("-" if t is None else f"{t:.1f}" for t in r["per_seed_s"])
        best = "-" if r["best_at_budget"] is None else f"{r['best_at_budget']:.4f}"
        fails = f"{r['failed_trials']} trials" if r["failed_trials"] else "0"
        if r["errors"]:
            fails += "; " + " | ".join(e[:120] for e in r["errors"])
        out.append(f"| {r['label']} | {r['reached']}/{r['runs']} |"
                   f" {seconds(r['time_to_target_s'])} | {ratio} |"
                   f" {seconds(r['time_to_target_epoch_s'])} | {best} |"
                   f" {r['trials_ended']:g} | {per_seed} | {fails} |")
    tc = [r for r in rows if r["config"] in TC and r["time_to_target_s"] is not None]
    best_tc = min(tc, key=lambda r: r["time_to_target_s"], default=None)
    if best_peer is None or best_tc is None:
        out += ["", "goal (best tunecluster <= 0.6x best peer): not measurable, "
                + ("no peer" if best_peer is None else "no tunecluster configuration")
                + " reached the target"]
    else:
        ratio = best_tc["time_to_target_s"] / best_peer["time_to_target_s"]
        out += ["", f"goal (best tunecluster <= 0.6x best peer): {best_tc['label']}"
                f" {ratio:.2f}x {best_peer['label']}: {'met' if ratio <= 0.6 else 'not met'}"]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=30.0)
    parser.add_argument("--target", type=float, nargs="+", default=[0.97])
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--only", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--quick", action="store_true",
                        help="smoke settings: 1 seed, 3 s per run, 3 epochs, target 0.5")
    parser.add_argument("--json", action="store_true", help="a JSON line after the table")
    parser.add_argument("--log-dir", help="keep the cluster's and the peers' logs there")
    parser.add_argument("--max-wall-s", type=float, default=None,
                        help="start no run that would end after this many seconds in all")
    parser.add_argument("--peer-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--with-ray", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_server:
        return peer_server()
    if args.quick:
        args.seeds, args.budget_s, args.epochs, args.target = 1, 3.0, 3, [0.5]
    args.seed_list = list(range(1, args.seeds + 1))
    configs = [c for c in CONFIGS if c in args.only]

    from tunecluster.cluster import LocalCluster
    from tunecluster.store import Store

    runs: dict[str, list[dict]] = {c: [] for c in configs}
    skipped: list[str] = []  # runs left out by --max-wall-s
    idle = [0.0, 0.0]  # the cluster's CPU seconds during the peers' runs, their wall time
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ttt-") as tmp:
        logs = Path(args.log_dir or tmp)
        logs.mkdir(parents=True, exist_ok=True)
        peers = (Peers(logs / "peers.log", "ray-asha" in configs)
                 if any(c in PEERS for c in configs) else None)
        try:
            with LocalCluster(workers=2, artifacts=Path(tmp) / "artifacts",
                              log_dir=logs / "cluster") as cluster:
                store = Store.from_url(cluster.url)
                if any(c in TC for c in configs):
                    warm_up(store, 2 if args.quick else 4)
                for i, seed in enumerate(args.seed_list):
                    order = configs[i % len(configs):] + configs[:i % len(configs)]
                    for config in order:
                        if args.max_wall_s and (time.time() - started + args.budget_s + 2
                                                > args.max_wall_s):
                            skipped.append(f"{config} seed {seed}")
                            continue
                        if config in PEERS and peers is not None:
                            cpu, wall = cluster_cpu_s(cluster), time.time()
                            run = peers.run(config, seed, args)
                            idle[0] += cluster_cpu_s(cluster) - cpu
                            idle[1] += time.time() - wall
                        else:
                            run = run_tunecluster(store, config, seed, args)
                        runs[config].append(run)
                        print(f"[{time.time() - started:6.1f} s] {config} seed {seed}:"
                              f" {len(run['ends'])} trials ended, best"
                              f" {max((v for _, v in run['ends']), default=None)},"
                              f" target at {first_at(run['ends'], args.target[0])}"
                              f"{', error: ' + run['error'] if run.get('error') else ''}",
                              file=sys.stderr, flush=True)
        finally:
            if peers is not None:
                peers.close()
    tables = {t: [summarize(c, runs[c], t) for c in configs] for t in args.target}
    print("\n\n".join(table(rows, args, t) for t, rows in tables.items()))
    print(f"\nwall time of the whole benchmark: {time.time() - started:.0f} s")
    if skipped:
        print(f"left out by --max-wall-s {args.max_wall_s:g}: {', '.join(skipped)}")
    if idle[1]:
        print(f"the idle cluster (Redis, chief, 2 workers) used {idle[0]:.1f} CPU s during the"
              f" peers' {idle[1]:.0f} s ({100 * idle[0] / idle[1]:.1f} % of one core)")
    if args.json:
        print(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "peer_server"},
                          "rows": tables[args.target[0]], "runs": runs,
                          "skipped": skipped, "idle_cpu_s_wall_s": idle,
                          "tables": {str(t): rows for t, rows in tables.items()}}))


if __name__ == "__main__":
    main()
