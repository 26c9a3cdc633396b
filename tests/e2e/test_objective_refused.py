"""The course's wrong objective (``metrics=["RootMeanSquaredError"]`` with
``objective: val_root_mean_squared_error``) is refused by ``submit`` in one line naming
the good names: no job queued, so no trial runs. Real Redis, chief and workers."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tunecluster.errors import ExitCode

from .conftest import cli

RMSE_MODEL = textwrap.dedent('''
    import keras

    def build_model(hp):
        model = keras.Sequential([keras.Input((10,)),
                                  keras.layers.Dense(hp.Int("units", 4, 8), activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse", metrics=["RootMeanSquaredError"])
        return model
''')


def test_a_wrong_objective_runs_no_trial(cluster, store, tmp_path: Path) -> None:
    (tmp_path / "rmse.py").write_text(RMSE_MODEL)
    spec = tmp_path / "job.yaml"
    spec.write_text(textwrap.dedent('''
        name: wrong-objective
        data: {dataset: diabetes}
        model: {module: rmse.py, task: regression}
        search: {algorithm: random, objective: val_root_mean_squared_error, max_trials: 5}
        train: {epochs: 1}
    '''))
    before = set(store.jobs.all(1000))
    out = cli("submit", str(spec), "--wait", "--redis", cluster.url)
    assert out.returncode == ExitCode.USAGE, (out.stdout, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0] == ("spec error: search.objective: 'val_root_mean_squared_error' is not"
                        " reported by the model build_model(hp) compiles; it reports:"
                        " val_loss, val_RootMeanSquaredError"), lines[0]
    assert set(store.jobs.all(1000)) == before  # nothing queued: 0 trials ran
    good = cli("validate", str(spec), "--set", "search.objective=val_RootMeanSquaredError")
    assert good.returncode == 0, good.stderr
