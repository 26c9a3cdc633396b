"""Training throughput of the course's MLP on digits: a tunecluster trial vs the course's
plain ``model.fit(X, y, epochs=..., validation_data=...)``, side by side in one run.

    .venv/bin/python bench/training_throughput.py [--epochs 20] [--repeats 3]

Both train the same model (Flatten, Dense 300 relu, Dense 100 relu, Dense 10 softmax,
Adam 1e-3, batch 32) on the same split for the same epochs, model building and tracing
included. The trial is ``tunecluster.worker.trial.run_trial`` as a worker runs it (tf.data
pipeline from the cached split, ``steps_per_execution`` chosen automatically).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COURSE_MODEL = '''
import keras

def build_model(hp):
    model = keras.Sequential([
        keras.Input(shape=(8, 8)),
        keras.layers.Flatten(),
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(loss="sparse_categorical_crossentropy",
                  optimizer=keras.optimizers.Adam(learning_rate=1e-3), metrics=["accuracy"])
    return model
'''


class _Silent:
    def epoch(self, epoch: int, metrics: dict) -> bool:
        return False


def main() -> None:
    import keras

    from tunecluster.models import load_build_function
    from tunecluster.spec import parse_spec
    from tunecluster.worker.runtime import JobRuntime
    from tunecluster.worker.trial import TrialRequest, run_trial

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    spec = parse_spec({"name": "throughput", "data": {"dataset": "digits"},
                       "model": {"source": COURSE_MODEL, "function": "build_model"},
                       "search": {"objective": "val_accuracy"},
                       "train": {"epochs": args.epochs, "batch_size": 32}})
    art = tempfile.mkdtemp()
    rt = JobRuntime.prepare("bench", spec, {"space": [], "values": {}}, art)
    s = rt.splits
    build = load_build_function(COURSE_MODEL, "build_model")
    n = len(s.x_train) * args.epochs

    plain, trial = [], []
    for i in range(args.repeats):
        keras.utils.set_random_seed(i)
        keras.backend.clear_session()
        t0 = time.perf_counter()
        model = build(None)
        hist = model.fit(s.x_train, s.y_train, epochs=args.epochs, batch_size=32,
                         validation_data=(s.x_valid, s.y_valid), verbose=0)
        plain.append((n / (time.perf_counter() - t0), max(hist.history["val_accuracy"])))

        keras.utils.set_random_seed(i)
        t0 = time.perf_counter()
        result = run_trial(rt, TrialRequest(f"t{i}", {}), _Silent())
        trial.append((n / (time.perf_counter() - t0 - result.timings["save_s"]), result.score))

    def summary(rows: list[tuple[float, float]]) -> dict:
        return {"samples_per_s": statistics.median(r[0] for r in rows),
                "best_val_accuracy": statistics.median(r[1] for r in rows)}

    out = {"epochs": args.epochs, "repeats": args.repeats, "train_rows": len(s.x_train),
           "plain_fit": summary(plain), "tunecluster_trial": summary(trial),
           "steps_per_execution": result.distribution["steps_per_execution"]}
    out["speedup"] = out["tunecluster_trial"]["samples_per_s"] / out["plain_fit"]["samples_per_s"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
