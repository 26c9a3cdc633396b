"""One trial on one worker vs the same trial on a gang of two (issue 14), side by side.

A local cluster (Redis, chief, 2 workers) runs the course's MLP on digits, one fixed
point (a grid of one), ``--epochs`` epochs at batch 32, alternately with
``resources.workers_per_trial`` 1 and 2 (``--rounds`` ABAB rounds on the same cluster).
Per run it takes from Redis:

- ``trial_s``: the trial's claim to its record (for the gang: its fresh trial
  processes' start, TensorFlow's import and the collective set-up included);
- ``epoch_s``: the median time between epoch reports after the first (steady training);
- the best validation accuracy.

Then one gang job of ``--consecutive`` trials runs, and each trial's time is printed in
order: the first pays its members' TensorFlow import, the next ones find their members'
processes started ahead (prewarmed after each gang trial), unlike the single gang trials
above, whose prewarmed processes each single-worker job in between stops.

It prints one JSON line per run and a summary with the gang / single ratios. On one
machine both gang members share its cores and talk over loopback, so the ratio shows the
cost of the collectives and the set-up, not a speed-up: the gain needs members on
different machines (or GPUs) whose compute is added, with a model large enough that a
step's compute outweighs its all-reduce.

    .venv/bin/python bench/gang.py [--rounds 2] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster
from tunecluster.store import Store


def spec(directory: Path, workers: int, epochs: int, neurons: list[int], *,
         name: str | None = None, n_hidden: int = 2, learning_rate: float = 0.002,
         steps: str = "auto") -> Path:
    """The course's MLP on digits, a grid over ``neurons`` (one trial per value), each
    trial trained by ``workers`` workers (also used by ``gang_failures.py``)."""
    name = name or f"bench-gang-{workers}"
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        data: {{dataset: digits, split: {{valid: 0.2, test: 0.2, seed: 42}}}}
        model:
          builtin: mlp
          task: classification
          input: flatten
          hyperparameters:
            n_hidden: {{choice: [{n_hidden}]}}
            n_neurons: {{choice: {neurons}}}
            learning_rate: {{choice: [{learning_rate}]}}
            optimizer: {{choice: [adam]}}
        search: {{algorithm: grid, objective: val_accuracy, max_trials: {len(neurons)}}}
        train: {{epochs: {epochs}, batch_size: 32, steps_per_execution: {steps}}}
        resources: {{workers_per_trial: {workers}}}
    """))
    return path


def consecutive(store: Store, directory: Path, trials: int, epochs: int,
                neurons: int) -> list[float]:
    """Claim-to-record seconds of each trial of one gang job of ``trials`` trials, in
    order: from the second on, each member's process was started ahead (prewarmed)."""
    path = spec(directory, 2, epochs, [neurons - 8 * i for i in range(trials)],
                name="bench-gang-in-a-row")
    job = submit(store, prepare_job(path, []))
    wait(store, job, timeout_s=900)
    rows = sorted(store.jobs.trials(job), key=lambda r: int(r["started"]))
    return [round((int(r["finished"]) - int(r["started"])) / 1000, 2) for r in rows]


def one_run(store: Store, path: Path, workers: int) -> dict:
    job = submit(store, prepare_job(path, []))
    results = wait(store, job, timeout_s=600)
    (trial,) = results["trials"]
    if trial["state"] != "COMPLETED":
        raise SystemExit(f"{workers} worker(s) per trial: the trial {trial['state']}:"
                         f" {trial['error']}")
    record = store.jobs.trial(job, trial["trial"])
    epochs = [int(e.id.split("-")[0]) for e in store.events.read(job, count=10_000)
              if e.type == "epoch"]
    gaps = [(b - a) / 1000 for a, b in zip(epochs[1:], epochs[2:], strict=False)]
    distribution = json.loads(record["result"])["distribution"]
    return {"workers_per_trial": workers, "state": results["state"],
            "trial_s": round((int(record["finished"]) - int(record["started"])) / 1000, 2),
            "epoch_s": round(statistics.median(gaps), 3) if gaps else None,
            "val_accuracy": round(trial["score"], 4),
            "replicas": distribution["replicas"], "strategy": distribution["strategy"],
            "members": [m["worker"] for m in trial["workers"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--neurons", type=int, default=256)
    parser.add_argument("--consecutive", type=int, default=4,
                        help="then one gang job of this many trials: each trial's time")
    parser.add_argument("--steps-per-execution", default="auto",
                        help="train.steps_per_execution of both (auto: 1 under replicas)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        paths = {n: spec(directory, n, args.epochs, [args.neurons],
                         steps=args.steps_per_execution) for n in (1, 2)}
        runs: dict[int, list[dict]] = {1: [], 2: []}
        with LocalCluster(workers=2, artifacts=directory / "artifacts",
                          log_dir=directory / "logs") as cluster:
            store = Store.from_url(cluster.url)
            one_run(store, paths[1], 1)  # warm-up: the workers' first job, not counted
            for r in range(args.rounds):
                for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                    row = one_run(store, paths[n], n)
                    runs[n].append(row)
                    print(json.dumps(row), flush=True)
            in_a_row = (consecutive(store, directory, args.consecutive, args.epochs,
                                    args.neurons) if args.consecutive > 1 else [])

    def median(n: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[n])

    summary = {"rounds": args.rounds, "epochs": args.epochs, "neurons": args.neurons,
               "steps_per_execution": args.steps_per_execution}
    for key in ("trial_s", "epoch_s", "val_accuracy"):
        summary[f"{key}_single"] = median(1, key)
        summary[f"{key}_gang2"] = median(2, key)
    summary["trial_ratio_gang_vs_single"] = round(median(2, "trial_s") / median(1, "trial_s"), 2)
    summary["epoch_ratio_gang_vs_single"] = round(median(2, "epoch_s") / median(1, "epoch_s"), 2)
    summary["gang_job_trial_s_in_order"] = in_a_row
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
