"""End to end through real processes: Redis, a chief, two workers, real Keras trials."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.data import load_splits
from tunecluster.spec import load_spec_file
from tunecluster.store.results import FIELDS

from .conftest import EXAMPLES, cli, run_job

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SMALL = ("search.max_trials=3", "train.epochs=2")


def _check_invariants(results: dict, max_trials: int) -> None:
    trials = results["trials"]
    ids = [t["trial"] for t in trials]
    assert len(ids) == len(set(ids)), "a trial is listed twice"
    assert len(trials) <= max_trials
    for t in trials:
        assert t["state"] in ("COMPLETED", "FAILED"), t
        if t["state"] == "FAILED":
            assert t["error"], t
        assert t["attempts"] >= 1


@pytest.mark.parametrize("algorithm", ["random", "grid", "bayesian", "hyperband"])
def test_digits_with_each_algorithm(store, algorithm: str, tmp_path: Path) -> None:
    overrides = [*SMALL, f"search.algorithm={algorithm}"]
    if algorithm == "grid":
        # grid needs a finite space: a stepped learning rate, two optimizers
        overrides += ["model.hyperparameters.learning_rate={float: [0.001, 0.01], step: 0.009}",
                      "model.hyperparameters.n_neurons={choice: [32, 64]}",
                      "model.hyperparameters.n_hidden={fixed: 1}"]
    results = run_job(store, EXAMPLES / "digits.yaml", *overrides)
    assert results["state"] == "completed", results.get("error")
    _check_invariants(results, 3)
    assert len(results["trials"]) >= 2
    assert results["best"]["score"] > 0.15  # 10 classes: chance is 0.1
    if algorithm == "grid":
        seen = {tuple(sorted(t["hyperparameters"].items())) for t in results["trials"]}
        assert len(seen) == len(results["trials"]), "grid search repeated a point"
    if algorithm == "hyperband":
        assert any(t["tuner"] for t in results["trials"])


def test_results_json_fields_and_best_model_scores_reported_test_metric(store, cluster,
                                                                          tmp_path: Path) -> None:
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", SMALL))
    wait(store, job, 240)
    out = cli("results", job, "--json", "--redis", cluster.url)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    both = cli("results", job, "--json", "--csv", "--redis", cluster.url)
    assert (both.returncode, both.stderr.strip()) == (
        2, "spec error: --json/--csv: give one format, not both")
    for field in FIELDS:
        assert field in results
    assert results["state"] == "completed"
    assert set(results["objective"]) == {"name", "direction"}
    assert results["classes"] == [str(i) for i in range(10)]  # output i is digit i
    assert set(results["best"]) == {"trial", "hyperparameters", "score", "metrics"}
    for t in results["trials"]:
        assert {"trial", "state", "hyperparameters", "score", "metrics", "attempts", "worker",
                "error"} <= set(t)
    best_path = Path(results["artifacts"]["best_model"])
    assert best_path.is_file()
    assert Path(results["artifacts"]["results"]).is_file()
    on_disk = json.loads(Path(results["artifacts"]["results"]).read_text())
    assert on_disk["best"]["trial"] == results["best"]["trial"]

    # The exported model reproduces the reported test score on the test split.
    import keras

    export = tmp_path / "best.keras"
    out = cli("best", job, "--export", str(export), "--redis", cluster.url, "--json")
    assert out.returncode == 0, out.stderr
    model = keras.models.load_model(export)
    spec = load_spec_file(EXAMPLES / "digits.yaml", SMALL)
    splits = load_splits(spec.data, spec.model.task)
    scores = model.evaluate(splits.x_test, splits.y_test, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-6)
    # and its validation score is the leaderboard's best score
    val = model.evaluate(splits.x_valid, splits.y_valid, verbose=0, return_dict=True)
    assert val["accuracy"] == pytest.approx(results["best"]["score"], abs=1e-6)
    # a name whose suffix promises another format is refused, nothing written
    h5 = cli("best", job, "--export", str(tmp_path / "best.h5"), "--redis", cluster.url)
    assert h5.returncode == 2 and not (tmp_path / "best.h5").exists()
    assert h5.stderr.strip() == (f"spec error: --export: '{tmp_path / 'best.h5'}': the best model"
                                 " is a .keras file; name a .keras file or a directory")


def test_regression_job_with_normalization(store) -> None:
    results = run_job(store, EXAMPLES / "regression.yaml", "search.max_trials=2",
                      "train.epochs=3")
    assert results["state"] == "completed", results.get("error")
    assert results["objective"] == {"name": "val_rmse", "direction": "min"}
    assert {"loss", "mae", "rmse"} <= set(results["test"])
    _check_invariants(results, 2)


def test_custom_module_job(store) -> None:
    results = run_job(store, EXAMPLES / "custom.yaml", "search.max_trials=2", "train.epochs=2")
    assert results["state"] == "completed", results.get("error")
    names = set(results["best"]["hyperparameters"])
    assert {"num_layers", "units_0", "lr"} <= names  # discovered from build_model(hp)


def test_two_jobs_submitted_together_both_complete(store) -> None:
    first = submit(store, prepare_job(EXAMPLES / "digits.yaml", ("search.max_trials=2",
                                                                  "train.epochs=1")))
    second = submit(store, prepare_job(EXAMPLES / "regression.yaml", ("search.max_trials=2",
                                                                       "train.epochs=2")))
    assert wait(store, first, 240)["state"] == "completed"
    assert wait(store, second, 240)["state"] == "completed"


FAILING_MODEL = textwrap.dedent('''
    import keras
    from keras import ops

    def build_model(hp):
        mode = hp.Choice("mode", ["ok", "raise", "nan"])
        if mode == "raise":
            raise ValueError("this model refuses to be built")
        model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                                  keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        loss = "sparse_categorical_crossentropy"
        if mode == "nan":
            def loss(y, p):
                return ops.mean(ops.log(p * 0.0 - 1.0))
        model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
        return model
''')


def test_raising_and_nan_trials_fail_and_the_job_completes(store, tmp_path: Path) -> None:
    (tmp_path / "failing.py").write_text(FAILING_MODEL)
    (tmp_path / "job.yaml").write_text(textwrap.dedent('''
        name: failing
        data: {dataset: digits}
        model: {module: failing.py}
        search: {algorithm: grid, objective: val_accuracy, max_trials: 3}
        train: {epochs: 2}
    '''))
    # submit-time discovery builds with the default value ("ok"), so the job is accepted
    results = run_job(store, tmp_path / "job.yaml")
    assert results["state"] == "completed", results.get("error")
    by_mode = {t["hyperparameters"]["mode"]: t for t in results["trials"]}
    assert set(by_mode) == {"ok", "raise", "nan"}
    assert by_mode["ok"]["state"] == "COMPLETED"
    assert by_mode["raise"]["state"] == "FAILED"
    assert "refuses to be built" in by_mode["raise"]["error"]
    assert by_mode["nan"]["state"] == "FAILED"
    assert "nan" in by_mode["nan"]["error"].lower()
    assert results["best"]["trial"] == by_mode["ok"]["trial"]


OWN_OBJECTS_MODEL = textwrap.dedent('''
    import keras
    from keras import ops

    class Scale(keras.layers.Layer):  # the user's own layer, not registered with Keras
        def __init__(self, factor=1.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    def top_class_prob(y_true, y_pred):  # the user's own metric function
        return ops.max(y_pred, axis=-1)

    def build_model(hp):
        model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                                  Scale(1.0 / 16.0),
                                  keras.layers.Dense(hp.Int("units", 16, 32, step=16),
                                                     activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy", top_class_prob])
        return model
''')


def test_a_custom_model_with_its_own_layer_and_metric_is_finalized(store, tmp_path) -> None:
    """The chief loads the best model to score it on the test split: the user's own
    (unregistered) classes and functions must resolve there as in the worker."""
    (tmp_path / "own.py").write_text(OWN_OBJECTS_MODEL)
    (tmp_path / "job.yaml").write_text(textwrap.dedent('''
        name: own-objects
        data: {dataset: digits}
        model: {module: own.py}
        search: {algorithm: random, objective: val_accuracy, max_trials: 1}
        train: {epochs: 1}
    '''))
    results = run_job(store, tmp_path / "job.yaml")
    assert results["state"] == "completed", results.get("error")
    assert {"accuracy", "top_class_prob"} <= set(results["test"])


def test_cli_submit_wait_status_and_bad_spec_is_not_queued(cluster, store, tmp_path) -> None:
    before = set(store.jobs.all())
    bad = cli("submit", str(EXAMPLES / "digits.yaml"), "--set", "search.algorithm=bayes",
              "--redis", cluster.url)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0
    assert "search.algorithm" in bad.stderr and "bayes" in bad.stderr
    assert set(store.jobs.all()) == before, "a rejected job was queued"

    out = cli("submit", str(EXAMPLES / "digits.yaml"), "--set", "search.max_trials=2",
              "--set", "train.epochs=1", "--redis", cluster.url, "--wait", "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert results["state"] == "completed"
    status = json.loads(cli("status", results["job"], "--json", "--redis", cluster.url).stdout)
    assert status["counts"].get("COMPLETED", 0) + status["counts"].get("FAILED", 0) == 2
    # every live worker says what its slots train on and its trial processes' memory
    workers = json.loads(cli("status", "--json", "--redis", cluster.url).stdout)["workers"]
    assert workers and all(w["devices"].split() == ["cpu"] * int(w["slots"])
                           and int(w["rss_mb"]) > 50 for w in workers), workers
    listed = json.loads(cli("list", "--json", "--redis", cluster.url).stdout)
    assert results["job"] in [row["job"] for row in listed]
    csv_out = cli("results", results["job"], "--csv", "--redis", cluster.url).stdout
    assert csv_out.splitlines()[0].startswith("trial,state,score")
    assert len(csv_out.strip().splitlines()) == 3
    unknown = cli("results", "no-such-job", "--redis", cluster.url)
    assert unknown.returncode == 1 and "no-such-job" in unknown.stderr


# Hyperband that really promotes, as cheaply as it can: max_epochs 3 with factor 2 makes a
# first bracket of 3 trials of 2 epochs, whose 2 best are promoted to 3 epochs
# (tuner/initial_epoch 2); max_trials=5 ends the search there (the 5th trial is the second
# promotion or, depending on which trial ends first, a fresh trial of a new bracket).
# The model (one wide layer, Adam at 3e-3, batch 16, val_loss) learns fast in its first
# epochs, so a fresh model's
# first epoch is far from its parent's second: measured in process, val_loss is about
# 0.53 after one epoch from scratch, 0.29 after two, 0.21 after a third from the loaded
# weights (0.50-0.59 again when the weights are not loaded).
HYPERBAND_PROMOTES = (
    "search.algorithm=hyperband", "search.hyperband_factor=2", "train.epochs=3",
    "search.max_trials=5", "search.objective=val_loss", "train.batch_size=16",
    "train.early_stopping=null",
    "model.hyperparameters.n_hidden={fixed: 1}",
    "model.hyperparameters.n_neurons={int: [96, 160]}",
    "model.hyperparameters.learning_rate={fixed: 0.003}",
    "model.hyperparameters.optimizer={fixed: adam}",
)


def test_hyperband_promoted_trials_continue_from_their_parents_weights(store) -> None:
    results = run_job(store, EXAMPLES / "digits.yaml", *HYPERBAND_PROMOTES)
    assert results["state"] == "completed", results.get("error")
    _check_invariants(results, 5)
    job = results["job"]
    by_id = {t["trial"]: t for t in results["trials"]}
    assert all(t["state"] == "COMPLETED" for t in by_id.values()), by_id
    # The first promotion is certain (made when 2 of the 3 first trials completed); the
    # second only if the third ends before the first promoted trial does: otherwise
    # KerasTuner starts a new bracket (a fresh 3-epoch trial) for the free slot.
    promoted = [t for t in by_id.values() if "tuner/trial_id" in (t["tuner"] or {})]
    assert 1 <= len(promoted) <= 2, f"Hyperband promoted {len(promoted)} trials: {by_id}"
    for child in promoted:
        tuner = child["tuner"]
        parent = by_id[str(tuner["tuner/trial_id"])]
        initial, last = int(tuner["tuner/initial_epoch"]), int(tuner["tuner/epochs"])
        # It continues the parent's epochs: its first recorded epoch is the one after them.
        child_epochs = store.jobs.epochs(job, child["trial"])
        assert sorted(child_epochs) == list(range(initial + 1, last + 1)), child_epochs
        assert min(child_epochs) == initial + 1 > 1
        parent_epochs = store.jobs.epochs(job, parent["trial"])
        assert sorted(parent_epochs) == list(range(1, initial + 1)), parent_epochs
        # ... and from the parent's weights (those of its best epoch, its model file):
        # its first epoch is near the parent's score, where a fresh model's first epoch
        # (the parent's own epoch 1: same hyperparameters, from scratch) is far from it
        # (measured: drift -0.28 to -0.43 continued, +0.84 with the weights not loaded).
        continued_from = parent["score"]
        fresh_first = parent_epochs[1]["val_loss"]
        first = child_epochs[initial + 1]["val_loss"]
        gap = fresh_first - continued_from
        assert gap > 0.1, (f"a fresh first epoch ({fresh_first:.3f}) is too close to the "
                           f"parent's score ({continued_from:.3f}) for this test to tell")
        # Its first epoch may improve on the parent (it trains on), but it must not drift
        # back towards a fresh model (closer to the fresh first epoch than to the parent),
        # nor improve by more in one epoch than the parent's first epoch did.
        drift = (first - continued_from) / gap
        print(f"\nhyperband: trial {child['trial']} from {parent['trial']}: epoch {initial + 1}"
              f" val_loss {first:.3f}, parent's {continued_from:.3f}, fresh first epoch"
              f" {fresh_first:.3f} (drift {drift:+.2f} of the gap; -1 < drift < 0.5)")
        assert -1.0 < drift < 0.5, (
            f"trial {child['trial']} does not continue from trial {parent['trial']}'s weights:"
            f" its first epoch (epoch {initial + 1}) has val_loss {first:.3f}, the parent"
            f" ended at {continued_from:.3f}, a fresh model's first epoch is {fresh_first:.3f}")


def _random_search_replay(space: dict, seed: int, draws: int) -> tuple[list[dict], list[int]]:
    """The values KerasTuner's random search draws, in order, for this space and seed,
    and its ``seed_state`` before each draw and after the last."""
    import keras_tuner as kt

    replay = kt.oracles.RandomSearchOracle(
        objective=kt.Objective("val_accuracy", "max"),
        hyperparameters=kt.HyperParameters.from_config(space), seed=seed, max_trials=100)
    values, states = [], [replay._seed_state]
    for _ in range(draws):
        values.append(replay._random_values())
        states.append(replay._seed_state)
    return values, states


def test_bayesian_trials_after_the_initial_points_come_from_the_gaussian_process(
        store) -> None:
    """KerasTuner's BayesianOptimizationOracle draws its first ``num_initial_points``
    trials from the same seeded random stream as random search (``_random_values``,
    which advances the oracle's ``seed_state``); once that many trials are COMPLETED it
    fits a Gaussian process and proposes the point maximising the acquisition, which
    consumes nothing of that stream. So, replaying the random stream with the job's seed:
    the first trials equal its first draws; a GP trial equals no draw; and the
    ``seed_state`` persisted in Redis has advanced by exactly the random trials.
    (The space is continuous, so a random draw never collides with an earlier trial.)"""
    initial, total = 2, 5
    results = run_job(store, EXAMPLES / "digits.yaml", "search.algorithm=bayesian",
                      f"search.num_initial_points={initial}", f"search.max_trials={total}",
                      "train.epochs=1")
    assert results["state"] == "completed", results.get("error")
    _check_invariants(results, total)
    job = results["job"]
    assert all(t["state"] == "COMPLETED" for t in results["trials"]), results["trials"]
    state = json.loads(store.client.get(store.keys.oracle(job)))
    space = store.jobs.get(job).space
    created = sorted(results["trials"], key=lambda t: int(t["trial"]))  # the oracle's order
    assert [t["trial"] for t in created] == [str(i) for i in range(total)]

    draws, seed_states = _random_search_replay(space, int(state["seed"]), total)
    origin, used = [], 0
    for t in created:
        if t["hyperparameters"] == draws[used]:
            origin.append("random")
            used += 1
        else:
            origin.append("gp")
    # The first points are random (nothing completed yet): the replay is faithful.
    assert origin[:initial] == ["random"] * initial, origin
    # With 2 worker slots the chief may create one more trial while the last initial
    # point still runs (fewer than num_initial_points completed: random); every trial
    # after that was created once num_initial_points had completed: GP.
    assert origin[initial + 1:] == ["gp"] * (total - initial - 1), origin
    # The oracle drew from its random stream exactly for those trials, no more.
    assert state["seed_state"] == seed_states[used], (state["seed_state"], seed_states, origin)
    assert state["num_initial_points"] == initial



def test_the_cli_shows_no_tensorflow_start_up_noise() -> None:
    """TensorFlow writes oneDNN/absl notices straight to fd 2 while it is imported; a
    user running the CLI must see only tunecluster's own output."""
    out = cli("validate", str(EXAMPLES / "digits.yaml"))
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr
    assert out.stdout.startswith("ok: digits-mlp")


def test_a_job_file_on_stdin_resolves_its_paths_against_the_working_directory(
        store, cluster, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    rows = "".join(f"{i % 7 * 0.5},{i % 3},{['a', 'b'][i % 2]}\n" for i in range(60))
    (tmp_path / "d.csv").write_text("f1,f2,label\n" + rows)
    job_file = textwrap.dedent("""\
        name: from-stdin
        data: {path: d.csv, target: label}
        model: {builtin: mlp, input: normalize, hyperparameters: {n_hidden: {fixed: 1}}}
        search: {max_trials: 1}
        train: {epochs: 1}
    """)
    out = subprocess.run([sys.executable, "-m", "tunecluster", "submit", "-", "--redis",
                          cluster.url, "--json"], input=job_file, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)["job"]
    results = wait(store, job, 120)
    assert results["state"] == "completed", results.get("error")
    assert store.jobs.get(job).spec["data"]["path"] == str(tmp_path / "d.csv")
    assert results["classes"] == ["a", "b"]  # the labels behind the model's outputs
