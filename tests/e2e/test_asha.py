"""Native ASHA through a real cluster: configurations stop at their rung and free the
slot; the top of a rung go on, continuing from their parent's model where it ended (no
epoch trained twice); the rung state survives a chief SIGKILL and a worker SIGKILL
mid-rung; every trial ends exactly once."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster
from tunecluster.store import Store

from .conftest import EXAMPLES, FAST_LIVENESS, run_job
from .invariants import assert_exactly_once

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# Rungs at 1 and 2 epochs, the last at 3; the top half of a rung goes on. One wide
# layer at a fixed learning rate: cheap, and it learns in its first epochs.
ASHA = ("search.algorithm=asha", "search.asha_factor=2", "search.asha_min_epochs=1",
        "train.epochs=3", "search.max_trials=4", "search.objective=val_loss",
        "train.early_stopping=null", "model.hyperparameters.n_hidden={fixed: 1}",
        "model.hyperparameters.n_neurons={int: [16, 160]}",
        "model.hyperparameters.learning_rate={fixed: 0.003}",
        "model.hyperparameters.optimizer={fixed: adam}")


def _check_rungs(store: Store, results: dict) -> dict[str, dict]:
    """Each trial trains its own rung's epochs only, continuing its parent's; the
    search reaches the last rung. Returns the trials by id."""
    job = results["job"]
    by_id = {t["trial"]: t for t in results["trials"]}
    rungs: dict[int, list[dict]] = {}
    for trial in by_id.values():
        tuner = trial["tuner"]
        initial, last = int(tuner["tuner/initial_epoch"]), int(tuner["tuner/epochs"])
        rungs.setdefault(int(tuner["tuner/round"]), []).append(trial)
        assert sorted(store.jobs.epochs(job, trial["trial"])) == list(
            range(initial + 1, last + 1)), (trial, "trained epochs outside its rung")
        parent_id = tuner.get("tuner/trial_id")
        if parent_id is None:
            assert initial == 0
            continue
        parent = by_id[str(parent_id)]
        assert int(parent["tuner"]["tuner/epochs"]) == initial, "does not start at its parent's end"
        assert trial["hyperparameters"] == parent["hyperparameters"]
    parents = [t["tuner"].get("tuner/trial_id") for t in by_id.values()]
    parents = [p for p in parents if p is not None]
    assert len(parents) == len(set(parents)), "a trial was continued twice"
    assert sorted(rungs) == [0, 1, 2], f"the search did not reach every rung: {sorted(rungs)}"
    assert len(rungs[0]) == 4  # max_trials counts the configurations drawn
    # the top half of the 4 go on, and one of those to the end (a trial promoted early,
    # then overtaken in its rung, may add one to a rung: the rule is asynchronous)
    assert 2 <= len(rungs[1]) <= 3 and 1 <= len(rungs[2]) <= 2, rungs
    return by_id


@pytest.mark.parametrize("sampler", ["random", "tpe"])  # tpe: ASHA over TPE (BOHB-like)
def test_asha_continues_the_top_of_each_rung_from_its_parent(store, sampler: str) -> None:
    results = run_job(store, EXAMPLES / "digits.yaml", *ASHA, f"search.asha_sampler={sampler}",
                      "search.tpe_startup_trials=2")
    assert results["state"] == "completed", results.get("error")
    by_id = _check_rungs(store, results)
    assert_exactly_once(store, results["job"], len(by_id))
    # the best configuration of the first rung is among those that went on
    first = [t for t in by_id.values() if t["tuner"]["tuner/round"] == 0]
    best = min(first, key=lambda t: t["score"])
    continued = {str(t["tuner"].get("tuner/trial_id")) for t in by_id.values()}
    assert best["trial"] in continued
    assert results["best"]["score"] == min(t["score"] for t in by_id.values())
    # the times in the results: created, claimed, ended in that order; a continuation is
    # claimed after its parent ended (the configuration paused, then resumed)
    for trial in by_id.values():
        times = trial["times"]
        assert results["created"] <= times["created"] <= times["claimed"] <= times["ended"]
        parent = trial["tuner"].get("tuner/trial_id")
        if parent is not None:
            assert times["claimed"] >= by_id[str(parent)]["times"]["ended"], trial


def _until(predicate: Callable[[], object], timeout: float = 180) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_asha_survives_a_chief_sigkill_and_a_worker_sigkill_mid_rung(tmp_path: Path) -> None:
    # Slower epochs (batch 8, one step per execution) so the worker is killed inside a
    # continued trial's rung, after its first epoch there and before its last.
    slow = (*ASHA, "train.epochs=4", "train.batch_size=8", "train.steps_per_execution=1",
            "search.max_retries_per_trial=1")
    with LocalCluster(workers=2, artifacts=tmp_path / "artifacts", log_dir=tmp_path / "logs",
                      env=FAST_LIVENESS) as cluster:
        store = Store.from_url(cluster.url)
        job = submit(store, prepare_job(EXAMPLES / "digits.yaml", slow))

        def completed() -> int:
            return sum(r.get("state") == "COMPLETED" for r in store.jobs.trials(job))

        _until(lambda: completed() >= 2)
        os.killpg(cluster.chiefs[0].pid, signal.SIGKILL)  # the rungs live in the trials
        cluster.start_chief()

        def continued_mid_rung() -> dict | None:
            """A continued trial that has trained one epoch of its rung, not the last."""
            for row in store.jobs.trials(job):
                tuner = json.loads(row.get("values") or "{}")
                if (row.get("state") == "RUNNING" and "tuner/trial_id" in tuner
                        and int(row.get("last_epoch") or 0) == int(
                            tuner["tuner/initial_epoch"]) + 1 < int(tuner["tuner/epochs"])):
                    return row
            return None

        victim = _until(continued_mid_rung)
        os.killpg(int(store.client.hget(store.keys.worker(victim["worker"]), "pid")),
                  signal.SIGKILL)
        cluster.start_worker()
        results = wait(store, job, 400)
        assert results["state"] == "completed", results.get("error")
        by_id = _check_rungs(store, results)
        assert_exactly_once(store, job, len(by_id))
        killed = by_id[victim["trial"]]
        assert killed["attempts"] == 2 and killed["state"] == "COMPLETED", killed
        assert killed["resumed_from_epoch"] == 3, killed  # its checkpoint, not its parent's


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_drop_in_asha_tuner(cluster, tmp_path: Path, monkeypatch, sampler: str) -> None:
    """``tunecluster.keras_tuner.ASHA`` with Hyperband's arguments: its job is an asha
    search (its new configurations drawn at random or by TPE), the best model comes back
    and scores as recorded."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import dropin_notebook_style as example

    import tunecluster.keras_tuner as kt

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.ASHA(example.build_model, objective="val_accuracy", max_trials=3,
                    max_epochs=2, min_epochs=1, factor=2, seed=1, directory=tmp_path,
                    sampler=sampler, num_initial_points=2,
                    project_name="asha", overwrite=True, cluster=cluster.url)
    tuner.search(example.X_train, example.y_train,
                 validation_data=(example.X_valid, example.y_valid), verbose=0)
    results = tuner.job.results()
    assert results["state"] == "completed", results.get("error")
    search = tuner.job.record().spec["search"]
    assert (search["algorithm"], search["asha_factor"], search["max_trials"]) == ("asha", 2, 3)
    assert search.get("asha_sampler", "random") == sampler
    if sampler == "tpe":
        assert search["tpe_startup_trials"] == 2
    rounds = sorted(t["tuner"]["tuner/round"] for t in results["trials"])
    assert rounds[:3] == [0, 0, 0] and 1 in rounds, rounds  # 3 drawn, the best went on
    model = tuner.get_best_models(1)[0]
    scores = model.evaluate(example.X_valid, example.y_valid, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(results["best"]["score"], abs=1e-6)
