"""``import tunecluster.keras_tuner as kt``: the course's example through real clusters."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import keras_tuner
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
sys.path.insert(0, str(Path(__file__).parent))


def test_random_search_on_the_shared_cluster(cluster, tmp_path: Path, capsys,
                                             monkeypatch) -> None:
    import dropin_notebook_style as example

    # this machine's view of the cluster's artifacts root (a shared volume elsewhere)
    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    start = time.monotonic()
    out = example.run(tmp_path, cluster=cluster.url)
    tuner = out["tuner"]
    results = tuner.job.results()  # `tunecluster results JOB` shows the same search
    assert results["state"] == "completed" and len(results["trials"]) == 2
    assert len(out["models"]) == 2  # asked for 3, two trials ran (as KerasTuner does)
    assert isinstance(out["params"][0], keras_tuner.HyperParameters)
    assert out["params"][0].values["n_hidden"] == results["best"]["hyperparameters"]["n_hidden"]
    best = out["best_trial"]
    assert best.trial_id == results["best"]["trial"] and best.score == results["best"]["score"]
    # the best model scores on the validation data what the search reported for it
    assert out["valid_accuracy"] == pytest.approx(results["best"]["score"], abs=1e-6)
    assert results["test"]["accuracy"] == pytest.approx(out["valid_accuracy"], abs=1e-6)
    assert out["test_accuracy"] > 0.5
    printed = capsys.readouterr().out
    assert "Results summary" in printed and "Best val_accuracy So Far" in printed
    assert "Trial" in printed and "n_neurons" in printed
    print(f"drop-in on the shared cluster: {time.monotonic() - start:.1f}s")


def test_random_search_on_an_embedded_cluster(tmp_path: Path, monkeypatch) -> None:
    import dropin_notebook_style as example

    monkeypatch.delenv("TUNECLUSTER_REDIS_URL", raising=False)
    start = time.monotonic()
    out = example.run(tmp_path, max_trials=1, epochs=1)
    assert out["test_accuracy"] > 0.3
    assert (tmp_path / "my_digits" / "artifacts").is_dir()
    # the cluster is gone, the results stay readable
    assert out["tuner"].get_best_hyperparameters()[0].values["n_hidden"] in (1, 2)
    print(f"drop-in on an embedded cluster: {time.monotonic() - start:.1f}s")


def test_ctrl_c_during_search_cancels_the_job(cluster, tmp_path: Path, monkeypatch) -> None:
    import _thread
    import signal
    import threading

    import dropin_notebook_style as example

    import tunecluster.keras_tuner as kt
    from tunecluster.store import Store

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    tuner = kt.RandomSearch(example.build_model, objective="val_accuracy", max_trials=20,
                            directory=tmp_path, project_name="interrupted",
                            cluster=cluster.url)
    store, searching = Store.from_url(cluster.url), threading.Event()
    pressed: list[float] = []

    def ctrl_c_while_a_trial_trains() -> None:
        # The user's Ctrl-C once a trial has reported an epoch (the search then waits on
        # the cluster), and again, as a user would, if the job saw no cancel 3 s later:
        # CI runs of the whole suite on a loaded machine twice saw a press lost (the search
        # went on to the end); where it was lost was not pinned down.
        while not searching.wait(0.2):
            job = tuner.job
            if job is None:
                continue
            if store.jobs.get(job.id).cancel_requested:
                return
            if (not pressed or time.monotonic() - pressed[-1] > 3.0) and any(
                    t.get("state") == "RUNNING" and t.get("last_epoch")
                    for t in store.jobs.trials(job.id)):
                pressed.append(time.monotonic())
                _thread.interrupt_main()

    # A terminal's Ctrl-C raises KeyboardInterrupt, whatever this test process inherited.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher = threading.Thread(target=ctrl_c_while_a_trial_trains, daemon=True)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            tuner.search(example.X_train, example.y_train, epochs=200, verbose=0,
                         validation_data=(example.X_valid, example.y_valid))
    finally:
        searching.set()
        signal.signal(signal.SIGINT, previous)
    assert pressed
    assert tuner.job is not None and tuner.job.state == "cancelled"
    assert not any(t["state"] == "RUNNING" for t in tuner.job.results()["trials"])
