"""Start-up speed (issue 13): the anchor job, whole-process wall time, side by side.

The course's MLP on digits, 12 random trials x 5 epochs, batch 32, the same space for
every system (n_hidden 1-3, n_neurons 16-256 step 16, learning_rate 1e-4..1e-2 log,
sgd/adam), each run a fresh process, timed from its start to its exit:

1. ``tunecluster run examples/digits_quick.yaml --workers 2`` (embedded Redis, chief,
   2 workers, test-split score and export included);
2. Ray Tune, ``reuse_actors=True``, 2 trials at once (``ray.init(num_cpus=2)``);
3. KerasTuner ``RandomSearch`` in one process (the course's way);
4. optionally (``--old PATH``) tunecluster from another checkout (``PATH/src``), e.g.
   ``git worktree add /tmp/speed-old 358b704``: the "before";
5. ``tunecluster run`` on a warm ``tunecluster up --workers 2`` (brought up once,
   before the first round, with a private record; stopped after the last).

The systems run in interleaved rounds (``--rounds``, default 3); medians, ratios
against Ray Tune, and each one's best validation accuracy are printed as JSON lines.

``--timeline`` instead runs tunecluster once per checkout and prints when each phase
of a run was reached (seconds from the command's start): Redis listening, the chief's
first beat, the workers registered, the first trial started, the last trial finished,
the job final, the results printed, the process gone. It watches from outside (the
process table and the run's Redis), so any version can be timed the same way.

    .venv/bin/python bench/startup.py [--rounds 3] [--old /tmp/speed-old]
    .venv/bin/python bench/startup.py --timeline [--old /tmp/speed-old]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "examples" / "digits_quick.yaml"
TRIALS, EPOCHS, BATCH = 12, 5, 32

KERAS_TUNER = textwrap.dedent('''
    import json, os, sys, tempfile
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras, keras_tuner as kt
    from tunecluster.spec import load_spec_file
    from tunecluster.data import load_splits

    spec = load_spec_file(sys.argv[1])
    s = load_splits(spec.data, spec.model.task)

    def build(hp):
        model = keras.Sequential([keras.Input(s.input_shape), keras.layers.Flatten()])
        for _ in range(hp.Int("n_hidden", 1, 3)):
            model.add(keras.layers.Dense(hp.Int("n_neurons", 16, 256, step=16),
                                         activation="relu"))
        model.add(keras.layers.Dense(s.num_classes, activation="softmax"))
        lr = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
        opt = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[
            hp.Choice("optimizer", ["sgd", "adam"])](learning_rate=lr)
        model.compile(loss="sparse_categorical_crossentropy", optimizer=opt,
                      metrics=["accuracy"])
        return model

    tuner = kt.RandomSearch(build, objective="val_accuracy", max_trials=%(trials)d, seed=7,
                            directory=tempfile.mkdtemp(), project_name="digits")
    tuner.search(s.x_train, s.y_train, epochs=%(epochs)d, batch_size=%(batch)d,
                 validation_data=(s.x_valid, s.y_valid), verbose=0)
    print(json.dumps({"best_val": tuner.oracle.get_best_trials(1)[0].score}))
''') % {"trials": TRIALS, "epochs": EPOCHS, "batch": BATCH}

RAY_TUNE = textwrap.dedent('''
    import json, os, sys, tempfile
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray stays on loopback
    import ray
    from ray import tune

    def trainable(config):
        import keras
        from tunecluster.data import load_splits

        s = load_splits(SPEC.data, SPEC.model.task)
        model = keras.Sequential([keras.Input(s.input_shape), keras.layers.Flatten()])
        for _ in range(config["n_hidden"]):
            model.add(keras.layers.Dense(config["n_neurons"], activation="relu"))
        model.add(keras.layers.Dense(s.num_classes, activation="softmax"))
        opt = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[
            config["optimizer"]](learning_rate=config["learning_rate"])
        model.compile(loss="sparse_categorical_crossentropy", optimizer=opt,
                      metrics=["accuracy"])

        class Report(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                tune.report({"val_accuracy": float(logs["val_accuracy"])})

        model.fit(s.x_train, s.y_train, epochs=%(epochs)d, batch_size=%(batch)d,
                  validation_data=(s.x_valid, s.y_valid), verbose=0, callbacks=[Report()])

    from tunecluster.spec import load_spec_file
    SPEC = load_spec_file(sys.argv[1])
    space = {"n_hidden": tune.randint(1, 4), "n_neurons": tune.qrandint(16, 256, 16),
             "learning_rate": tune.loguniform(1e-4, 1e-2),
             "optimizer": tune.choice(["sgd", "adam"])}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    grid = tune.Tuner(trainable, param_space=space,
                      tune_config=tune.TuneConfig(num_samples=%(trials)d, metric="val_accuracy",
                                                  mode="max", max_concurrent_trials=2,
                                                  reuse_actors=True),
                      run_config=tune.RunConfig(verbose=0, storage_path=tempfile.mkdtemp())).fit()
    best = grid.get_best_result(scope="all")
    print(json.dumps({"best_val": best.metrics_dataframe["val_accuracy"].max()}))
    ray.shutdown()
''') % {"trials": TRIALS, "epochs": EPOCHS, "batch": BATCH}


WARM = {"file": str(Path(tempfile.gettempdir()) / "tc-bench-warm" / "cluster.json")}


def _env(src: Path | None, warm: bool = False) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TUNECLUSTER_REDIS_URL", None)
    # a private cluster record: absent (`run` starts its own embedded cluster), or the
    # one of the warm cluster this benchmark brought up
    env["TUNECLUSTER_CLUSTER_FILE"] = WARM["file"] if warm else str(
        Path(tempfile.gettempdir()) / "tc-bench-no-cluster.json")
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def run_tunecluster(src: Path | None = None, warm: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as art:
        t0 = time.time()
        args = [] if warm else ["--workers", "2", "--artifacts", art]
        done = subprocess.run([sys.executable, "-m", "tunecluster", "run", str(JOB), *args,
                               "--json"], capture_output=True, text=True, timeout=900,
                              env=_env(src, warm))
        wall = time.time() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    return {"wall_s": wall, "best_val": results["best"]["score"],
            "test": results["test"]["accuracy"]}


def _script(text: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.py"
        path.write_text(text)
        t0 = time.time()
        done = subprocess.run([sys.executable, str(path), str(JOB)], capture_output=True,
                              text=True, timeout=900, env=_env(None), cwd=tmp)
        wall = time.time() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "best_val": row["best_val"]}


SYSTEMS = {
    "tunecluster run --workers 2": lambda old: run_tunecluster(),
    "Ray Tune, reuse_actors=True, 2 at once": lambda old: _script(RAY_TUNE),
    "KerasTuner RandomSearch, one process": lambda old: _script(KERAS_TUNER),
    "tunecluster run --workers 2, before (--old)": lambda old: run_tunecluster(old),
    "tunecluster run on a warm `tunecluster up --workers 2`":
        lambda old: run_tunecluster(warm=True),
}


def _cluster(command: str) -> None:
    done = subprocess.run([sys.executable, "-m", "tunecluster", command, *(
        ["--workers", "2", "--artifacts", str(Path(WARM["file"]).parent / "art")]
        if command == "up" else [])], capture_output=True, text=True, timeout=300,
        env=_env(None, warm=True))
    assert done.returncode == 0, done.stderr[-2000:]


def compare(rounds: int, old: Path | None, skip: list[str]) -> None:
    names = [n for n in SYSTEMS if not any(s in n for s in skip)
             and (old is not None or "--old" not in n)]
    rows: dict[str, list[dict]] = {n: [] for n in names}
    warm = any("warm" in n for n in names)
    if warm:
        _cluster("up")  # once: its processes stay warm across the rounds
    try:
        for r in range(rounds):
            for name in names:  # interleaved: every system once per round
                rows[name].append(SYSTEMS[name](old))
                print(json.dumps({"round": r + 1, "system": name, **rows[name][-1]}),
                      flush=True)
    finally:
        if warm:
            _cluster("down")
    ray = next((n for n in names if n.startswith("Ray")), None)
    ray_wall = statistics.median(x["wall_s"] for x in rows[ray]) if ray else None
    for name in names:
        wall = statistics.median(x["wall_s"] for x in rows[name])
        print(json.dumps({
            "system": name, "rounds": rounds, "wall_s_median": round(wall, 2),
            "wall_s": [round(x["wall_s"], 2) for x in rows[name]],
            "vs_ray_tune": round(wall / ray_wall, 2) if ray_wall else None,
            "best_val_accuracy": [round(x["best_val"], 4) for x in rows[name]]}), flush=True)


# --- timeline ---------------------------------------------------------------------------


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[-1].split()[1])
            if ppid == pid:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    out.append((int(entry), f.read().replace(b"\0", b" ").decode()))
        except (OSError, ValueError, IndexError):
            pass
    return out


def timeline(src: Path | None) -> dict:
    """One run of tunecluster with the moment each phase was first seen."""
    from tunecluster.store import Store

    marks: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as art:
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "tunecluster", "run", str(JOB),
                                 "--workers", "2", "--artifacts", art, "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=_env(src))
        chunks: list[bytes] = []

        def read() -> None:
            assert proc.stdout is not None
            first = proc.stdout.read(1)
            marks.setdefault("results printed", time.time() - t0)
            chunks.append(first + proc.stdout.read())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        store, job = None, None
        while proc.poll() is None:
            now = time.time() - t0
            if store is None:
                for _pid, cmd in _children(proc.pid):
                    if "redis-server" in cmd:
                        # its arguments (--port N), or the title it gives itself (host:N)
                        words = cmd.split()
                        port = (words[words.index("--port") + 1] if "--port" in words
                                else cmd.split(":")[-1].split()[0])
                        try:
                            candidate = Store.from_url(f"redis://127.0.0.1:{port}/0",
                                                       retries=1)
                            candidate.client.ping()
                            store = candidate
                            marks["redis listening"] = now
                        except Exception:  # noqa: BLE001 - not yet
                            pass
            else:
                try:
                    if "chief beat" not in marks and store.client.get(store.keys.chief_beat):
                        marks["chief beat"] = now
                    if "2 workers registered" not in marks and \
                            len(store.workers.live(60)) >= 2:
                        marks["2 workers registered"] = now
                    if job is None:
                        jobs = store.jobs.all()
                        if jobs:
                            job = jobs[0]
                            marks["job submitted"] = now
                    if job is not None and "job final" not in marks:
                        rows = store.jobs.trials(job)
                        started = [int(r["started"]) / 1000 - t0 for r in rows
                                   if r.get("started")]
                        if started:
                            marks["first trial started"] = min(started)
                        state = store.jobs.get(job).state
                        if state in ("completed", "failed", "cancelled"):
                            marks["job final"] = now
                            marks["last trial finished"] = max(
                                int(r["finished"]) / 1000 - t0 for r in rows
                                if r.get("finished"))
                except Exception:  # noqa: BLE001 - Redis is gone: the run is ending
                    pass
            time.sleep(0.02)
        marks["process exited"] = time.time() - t0
        reader.join(5)
    results = json.loads(b"".join(chunks))
    order = ["redis listening", "chief beat", "job submitted", "2 workers registered",
             "first trial started", "last trial finished", "job final", "results printed",
             "process exited"]
    return {"checkout": str(src or ROOT), "best_val": results["best"]["score"],
            **{k: round(marks[k], 2) for k in order if k in marks}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old", type=Path, default=None,
                        help="another checkout to time as 'before' (its src/ is used)")
    parser.add_argument("--skip", nargs="*", default=[],
                        help="systems to leave out (substrings: Ray, KerasTuner, before,"
                             " warm)")
    parser.add_argument("--timeline", action="store_true")
    args = parser.parse_args()
    old = args.old.resolve() / "src" if args.old else None
    if args.timeline:
        for r in range(args.rounds):
            for src in ([None, old] if old else [None]):
                print(json.dumps({"round": r + 1, **timeline(src)}), flush=True)
        return
    compare(args.rounds, old, args.skip)


if __name__ == "__main__":
    main()
