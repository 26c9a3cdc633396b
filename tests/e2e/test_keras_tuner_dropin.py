"""``import tunecluster.keras_tuner as kt``: the course's example through real clusters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# Ctrl-C to a search: its job cancelled, the search's process gone, within this (the
# cancel lands at the chief's next tick, a trial stops within an epoch: a second here)
CTRL_C_MARGIN_S = 20.0


def _spawn_as_from_a_terminal(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """A terminal starts a program with SIGINT at its default (Python then raises
    KeyboardInterrupt). A test run started in the background has it ignored, and an
    ignored signal stays ignored across exec; a handled one is reset to the default."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait_for(what: Callable[[], Any], timeout_s: float, message: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(message)


@pytest.mark.parametrize("lands", ["while the search waits", "in a finalizer"])
def test_one_sigint_during_search_cancels_the_job(cluster, store, tmp_path: Path,
                                                  lands: str) -> None:
    from tunecluster.api.tuner_project import read_project

    marker = tmp_path / "in-the-finalizer"
    out, err = (tmp_path / "stdout").open("wb"), (tmp_path / "stderr").open("wb")
    env = {**os.environ, "TUNECLUSTER_REDIS_URL": cluster.url,
           "TUNECLUSTER_ARTIFACTS": str(cluster.artifacts)}
    args = [sys.executable, str(Path(__file__).with_name("dropin_ctrl_c.py")), str(tmp_path),
            *([str(marker)] if lands == "in a finalizer" else [])]
    search = _spawn_as_from_a_terminal(args, env=env, stdout=out, stderr=err)
    job = None
    try:
        job = _wait_for(lambda: read_project(str(tmp_path), "interrupted", "RandomSearch"),
                        150, "the search submitted no job")

        def trains() -> bool:
            return any(t.get("state") == "RUNNING" and t.get("last_epoch")
                       for t in store.jobs.trials(job))

        _wait_for(marker.exists if lands == "in a finalizer" else trains, 150,
                  f"no trial of {job} reported an epoch")
        assert search.poll() is None and not store.jobs.get(job).cancel_requested
        pressed = time.monotonic()
        os.kill(search.pid, signal.SIGINT)  # once
        try:
            code = search.wait(timeout=CTRL_C_MARGIN_S)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - pressed
        stderr = (tmp_path / "stderr").read_text()
        assert code is not None, (f"the search still runs {took:.0f} s after one SIGINT"
                                  f" (job {store.jobs.get(job).state}): {stderr[-2000:]}")
        # KeyboardInterrupt went on, uncaught: Python exits killed by SIGINT
        assert code == -signal.SIGINT, stderr[-2000:]
        assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr[-2000:]
        if lands == "in a finalizer":  # where Python drops the press's own exception
            assert "Exception ignored in" in stderr and "__del__" in stderr, stderr[-2000:]
        assert store.jobs.get(job).state == "cancelled"
        assert not any(t.get("state") == "RUNNING" for t in store.jobs.trials(job))
        print(f"one SIGINT {lands}: job cancelled, search exited after {took:.1f} s")
    finally:
        if search.poll() is None:
            search.kill()
            search.wait()
        if job is not None:
            store.jobs.request_cancel(job)  # a failed test leaves no search on the cluster
        out.close()
        err.close()
