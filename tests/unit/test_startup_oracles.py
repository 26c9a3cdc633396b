"""The chief runs KerasTuner's oracles with Keras stood in for (engine/keras_free.py):
every suggestion and every persisted state must be what the real Keras gives.

Each side runs in a process of its own (a process holds one ``keras``): the same jobs,
the same reported metrics, every algorithm; their outputs must be identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, sys
    from tunecluster.engine.keras_free import import_keras_tuner, keras_is_stood_in
    if sys.argv[1] == "real":
        import keras  # noqa: F401 - loaded first: import_keras_tuner keeps it
    import_keras_tuner()
    from tunecluster.engine.oracle_host import OracleHost
    from tunecluster.spec import parse_spec
    from tunecluster.spec.space import space_config

    out = {"stood_in": keras_is_stood_in(), "tensorflow": "tensorflow" in sys.modules,
           "sklearn_deferred": type(sys.modules.get("sklearn")).__name__ == "_Deferred",
           "runs": {}}
    for algorithm in ("random", "bayesian", "hyperband", "grid"):
        spec = parse_spec({
            "name": "t", "data": {"dataset": "digits"},
            "model": {"builtin": "mlp", "hyperparameters": {
                "n_hidden": {"int": [1, 3]},
                "n_neurons": {"int": [16, 256], "step": 16},
                "learning_rate": {"float": [1e-4, 1e-2], "sampling": "log"}
                if algorithm != "grid" else {"float": [1e-4, 1e-3], "step": 3e-4},
                "optimizer": {"choice": ["sgd", "adam"]},
                "dropout": {"choice": [0.0, 0.25]}}},
            "search": {"algorithm": algorithm, "max_trials": 7, "seed": 3,
                       "num_initial_points": 2},
            "train": {"epochs": 3}})
        host = OracleHost.create(spec, space_config(spec.model.hyperparameters))
        steps = []
        for i in range(9):
            status, trial, values = host.create_trial()
            steps.append([status, values])
            if trial is None:
                continue
            for epoch in range(1, 3):
                acc = (i * 7 % 5) / 10 + epoch / 100
                host.update(trial, epoch, {"loss": 1 - acc, "accuracy": acc,
                                           "val_loss": 1.1 - acc, "val_accuracy": acc - 0.01,
                                           "val_rmse": 0.5, "val_auc": acc})
            host.end(trial, completed=i != 4, message="boom" if i == 4 else None)
            steps.append([host.state_json(), host.trial_json(trial)])
        out["runs"][algorithm] = steps
    print(json.dumps(out))
''')


def _run(side: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TUNECLUSTER_REAL_KERAS", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, side], capture_output=True,
                          text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_oracles_decide_the_same_with_and_without_keras() -> None:
    light, real = _run("light"), _run("real")
    assert light["stood_in"] and not light["tensorflow"]
    assert light["sklearn_deferred"]  # imported only when the Bayesian oracle fits
    assert not real["stood_in"] and real["tensorflow"]
    for algorithm, steps in real["runs"].items():
        assert light["runs"][algorithm] == steps, algorithm
    # the runs did something: trials were created and ended
    assert sum(s[0] == "RUNNING" for s in real["runs"]["random"]) == 7


def test_metric_directions_match_keras() -> None:
    """Every metric or loss name Keras knows (and val_/weighted_ forms) gets the
    direction real Keras gives KerasTuner, wherever real Keras answers at all."""
    script = textwrap.dedent('''
        import json, sys
        if sys.argv[1] == "real":
            import keras
            from keras.src.losses import ALL_OBJECTS_DICT as L
            from keras.src.metrics import ALL_OBJECTS_DICT as M
            names = sorted(set(M) | set(L))
        else:
            names = json.loads(sys.stdin.read())
            from tunecluster.engine.keras_free import import_keras_tuner
            import_keras_tuner()
        from keras_tuner.src.engine.metrics_tracking import MetricsTracker
        out = {}
        for base in names + ["rmse", "acc", "ce", "my_metric"]:
            for name in (base, "val_" + base, "weighted_" + base):
                try:
                    tracker = MetricsTracker()
                    tracker.register(name)
                    out[name] = tracker.metrics[name].direction
                except Exception:
                    out[name] = None  # real Keras fails for this name
        print(json.dumps({"names": names, "directions": out}))
    ''')
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    real = subprocess.run([sys.executable, "-c", script, "real"], capture_output=True,
                          text=True, timeout=240, env=env)
    assert real.returncode == 0, real.stderr[-3000:]
    theirs = json.loads(real.stdout.strip().splitlines()[-1])
    light = subprocess.run([sys.executable, "-c", script, "light"], capture_output=True,
                           text=True, timeout=240, env=env, input=json.dumps(theirs["names"]))
    assert light.returncode == 0, light.stderr[-3000:]
    ours = json.loads(light.stdout.strip().splitlines()[-1])["directions"]
    assert "val_accuracy" in ours and ours["val_accuracy"] == "max"
    differ = {n: (d, ours[n]) for n, d in theirs["directions"].items()
              if d is not None and ours[n] != d}
    assert not differ


def test_a_bayesian_oracle_runs_where_pandas_is_not_installed() -> None:
    """KerasTuner imports pandas only if it can (an image may lack it): the chief's
    deferred imports must leave that choice to KerasTuner, not fail on first use."""
    import subprocess
    import sys

    script = """
import importlib.abc, sys
class NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
sys.meta_path.insert(0, NoPandas())
from tunecluster.engine.keras_free import import_keras_tuner
kt = import_keras_tuner()
from keras_tuner.oracles import BayesianOptimizationOracle
oracle = BayesianOptimizationOracle(objective=kt.Objective("val_accuracy", "max"),
                                    max_trials=2)
print("ok", "pandas" in sys.modules, "tensorflow" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "False", "False"]
