"""What ``train.deterministic: true`` costs: a few-epoch digits trial with and without.

    .venv/bin/python bench/deterministic.py [--rounds 3] [--epochs 5]

Runs the course's MLP on the embedded digits through the worker's own trial path
(``run_trial`` on a ``JobRuntime``, in one process as a trial process runs them), the
two modes alternating (AB, BA, ...) after one discarded warm-up trial each. Prints the
median build + fit seconds per mode and one JSON line with the ratio on / off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from tunecluster.spec import parse_spec
from tunecluster.spec.space import build_space, space_to_json
from tunecluster.worker.runtime import JobRuntime
from tunecluster.worker.trial import TrialRequest, run_trial

VALUES = {"n_hidden": 2, "n_neurons": 64, "learning_rate": 0.003, "optimizer": "adam"}


class _Quiet:
    def epoch(self, epoch: int, metrics: object) -> bool:
        return False


def trial_s(root: Path, deterministic: bool, epochs: int, n: int) -> float:
    spec = parse_spec({"name": "bench", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp"},
                       "search": {"objective": "val_accuracy", "seed": 1},
                       "train": {"epochs": epochs, "batch_size": 32,
                                 "deterministic": deterministic}})
    space = space_to_json(build_space(spec.model.hyperparameters))
    rt = JobRuntime.prepare(f"job-{n}", spec, space, root)
    result = run_trial(rt, TrialRequest(f"{n:04d}", dict(VALUES)), _Quiet())
    return result.timings["build_s"] + result.timings["fit_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        n = 0
        for mode in (False, True):  # warm-up, discarded
            n += 1
            trial_s(Path(tmp), mode, args.epochs, n)
        for r in range(args.rounds):
            for mode in ((False, True) if r % 2 == 0 else (True, False)):
                n += 1
                times[mode].append(trial_s(Path(tmp), mode, args.epochs, n))
    off, on = (statistics.median(times[m]) for m in (False, True))
    print(f"digits MLP, {args.epochs} epochs, batch 32: off {off:.2f} s, on {on:.2f} s")
    print(json.dumps({"epochs": args.epochs, "off_s": round(off, 3), "on_s": round(on, 3),
                      "ratio": round(on / off, 3), "runs": {str(k): v for k, v in times.items()}}))


if __name__ == "__main__":
    main()
