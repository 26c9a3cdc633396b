"""Memory of one warm trial process over many trials, and the bound the worker enforces.

    .venv/bin/python bench/memory.py [--trials 100]

Runs digits trials back to back in one process exactly as a worker's trial process
does and prints its RSS every 10 trials: the growth per trial is what TensorFlow leaks
across models. A worker recycles the process after TUNECLUSTER_TRIALS_PER_CHILD trials
(default 50) or past TUNECLUSTER_CHILD_MAX_RSS_MB (default 4096), so its memory stays
below the first RSS + 50 x the growth per trial, whatever the number of trials.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    import psutil

    from tunecluster import defaults
    from tunecluster.spec import parse_spec
    from tunecluster.spec.space import build_space, space_to_json
    from tunecluster.worker.runtime import JobRuntime
    from tunecluster.worker.trial import TrialRequest, run_trial

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    spec = parse_spec({"name": "memory", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp"}, "search": {"objective": "val_accuracy"},
                       "train": {"epochs": 1}})
    rt = JobRuntime.prepare("memory", spec, space_to_json(build_space({})), tempfile.mkdtemp())
    proc = psutil.Process()

    class Quiet:
        def epoch(self, epoch: int, metrics: dict) -> bool:
            return False

    rss = []
    for i in range(args.trials):
        run_trial(rt, TrialRequest(f"t{i}", {"n_neurons": 32 + i % 7}), Quiet())
        if i % 10 == 9 or i == 0:
            rss.append((i + 1, proc.memory_info().rss / 2**20))
            print(f"after {i + 1:4d} trials: RSS {rss[-1][1]:.0f} MB", flush=True)
    per_trial = (rss[-1][1] - rss[0][1]) / max(1, rss[-1][0] - rss[0][0])
    print(json.dumps({"trials": args.trials, "first_rss_mb": rss[0][1], "last_rss_mb": rss[-1][1],
                      "growth_mb_per_trial": per_trial,
                      "bound_mb": rss[0][1] + defaults.TRIALS_PER_CHILD * max(per_trial, 0),
                      "trials_per_child": defaults.TRIALS_PER_CHILD}))


if __name__ == "__main__":
    main()
