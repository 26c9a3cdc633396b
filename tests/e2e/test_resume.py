"""Resume through real processes: a drop-in tuner re-created with the same project
reattaches to its job and continues it; ``tunecluster resume`` continues a finished job."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

import tunecluster.keras_tuner as kt
from tunecluster.api import Client
from tunecluster.errors import ExitCode

from .conftest import cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[2]


def _tuner(example, tmp_path: Path, url: str, max_trials: int, **kwargs):
    return kt.RandomSearch(example.build_model, objective="val_accuracy",
                           max_trials=max_trials, seed=5, directory=tmp_path,
                           project_name="resumed", cluster=url, **kwargs)


def _search(tuner, example, verbose: int = 0) -> None:
    tuner.search(example.X_train, example.y_train, epochs=1, verbose=verbose,
                 validation_data=(example.X_valid, example.y_valid))


def test_a_recreated_tuner_reattaches_and_continues_its_search(
        cluster, tmp_path: Path, monkeypatch, capsys) -> None:
    import dropin_notebook_style as example

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    start = time.monotonic()
    first = _tuner(example, tmp_path, cluster.url, 2)
    _search(first, example)
    job = first.job.id
    before = {t["trial"]: t for t in first.job.results()["trials"]}
    assert len(before) == 2
    saved = json.loads((tmp_path / "resumed" / "tunecluster_job.json").read_text())
    assert saved == {"job": job, "tuner": "RandomSearch"}  # reloaded by the same class only

    # KerasTuner's reload: same directory and project_name, overwrite=False
    second = _tuner(example, tmp_path, cluster.url, 4)
    assert second.job is not None and second.job.id == job  # readable before search()
    assert second.get_best_hyperparameters(1)[0].values  # the old results, reloaded
    _search(second, example, verbose=1)
    after = second.results()
    assert second.job.id == job and after["state"] == "completed"
    assert len(after["trials"]) == 4
    for trial, row in before.items():  # the earlier trials are kept as they were
        now = next(t for t in after["trials"] if t["trial"] == trial)
        assert (now["hyperparameters"], now["score"]) == (row["hyperparameters"],
                                                          row["score"])
    values = [json.dumps(t["hyperparameters"], sort_keys=True) for t in after["trials"]]
    assert len(set(values)) == 4  # the oracle went on: no repeated suggestion
    assert second.job.record().fields["resumed"] == "1"
    out = capsys.readouterr().out
    assert f"Resuming search {job}: 2 trial(s) ran, up to 4" in out
    assert out.count("Trial ") == 2  # only the new trials are reported

    # as many trials as asked already ran: reloaded, nothing more runs
    third = _tuner(example, tmp_path, cluster.url, 4)
    _search(third, example, verbose=1)
    assert third.job.id == job and len(third.results()["trials"]) == 4
    assert "Reloading search" in capsys.readouterr().out

    # overwrite=True starts a new search
    fresh = _tuner(example, tmp_path, cluster.url, 1, overwrite=True)
    assert fresh.job is None
    _search(fresh, example)
    assert fresh.job.id != job and len(fresh.results()["trials"]) == 1
    print(f"reattach: {time.monotonic() - start:.1f}s")


def test_cli_resume_continues_a_finished_job(cluster) -> None:
    client = Client(cluster.url)
    job = client.submit(ROOT / "examples" / "digits.yaml",
                        ["search.max_trials=1", "train.epochs=1", "name=resume-cli"])
    assert job.wait(timeout=120)["state"] == "completed"
    done = cli("resume", job.id, "--redis", cluster.url, "--set", "search.max_trials=2",
               "--wait")
    assert done.returncode == 0, done.stderr
    assert f"resuming {job.id} (was completed)" in done.stdout
    results = job.results()
    assert results["state"] == "completed" and len(results["trials"]) == 2
    assert results["best"] is not None and results["test"]  # finalized again


def test_an_embedded_search_is_reattached_from_its_project_directory(
        tmp_path: Path, monkeypatch) -> None:
    """No cluster given: the embedded cluster keeps its Redis data in the project's
    directory, and a re-created tuner (overwrite=False) continues the same job there."""
    import dropin_notebook_style as example

    monkeypatch.delenv("TUNECLUSTER_REDIS_URL", raising=False)
    monkeypatch.delenv("TUNECLUSTER_ARTIFACTS", raising=False)
    monkeypatch.setenv("TUNECLUSTER_CLUSTER_FILE", str(tmp_path / "no-cluster.json"))
    first = _tuner(example, tmp_path, None, 1, workers=1)
    _search(first, example)
    job = first.job.id
    scored = {t["trial"]: t["score"] for t in first.results()["trials"]}
    assert len(scored) == 1 and (tmp_path / "resumed" / "cluster").is_dir()

    second = _tuner(example, tmp_path, None, 2, workers=1)
    _search(second, example)
    after = second.results()
    assert second.job.id == job and after["state"] == "completed"
    assert len(after["trials"]) == 2
    assert all(after_row["score"] == scored[after_row["trial"]]
               for after_row in after["trials"] if after_row["trial"] in scored)
    assert second.get_best_models(1)[0] is not None  # from the project's artifacts

    fresh = _tuner(example, tmp_path, None, 1, workers=1, overwrite=True)
    _search(fresh, example)
    assert fresh.job.id != job and len(fresh.results()["trials"]) == 1


def test_a_hyperband_search_resumed_past_its_bracket_cycle_ends_at_once(cluster) -> None:
    """README: "A Hyperband search that went through its bracket cycle ends at once when
    resumed". With 2 epochs and factor 3, KerasTuner's cycle is one bracket of 2 trials:
    the search ends there, far below max_trials; resumed to more, it runs no trial."""
    client = Client(cluster.url)
    job = client.submit(ROOT / "examples" / "digits.yaml",
                        ["search.algorithm=hyperband", "search.hyperband_factor=3",
                         "train.epochs=2", "search.max_trials=6", "train.early_stopping=null",
                         "name=resume-hyperband"])
    first = job.wait(timeout=180)
    assert first["state"] == "completed", first.get("error")
    ran = {t["trial"] for t in first["trials"]}
    assert len(ran) == 2, first["trials"]  # the cycle, not max_trials, ended it
    start = time.monotonic()
    done = cli("resume", job.id, "--redis", cluster.url, "--set", "search.max_trials=8",
               "--wait")
    took = time.monotonic() - start
    assert done.returncode == ExitCode.OK, done.stderr
    assert f"resuming {job.id} (was completed)" in done.stdout
    again = job.results()
    assert again["state"] == "completed" and again["best"] is not None
    assert {t["trial"] for t in again["trials"]} == ran, "no trial after the cycle"
    assert job.record().spec["search"]["max_trials"] == 8
    # at once: no training, only the chief's pick-up and the finalize (a CLI process
    # and a few chief rounds; a trial of 2 epochs alone takes longer on this machine)
    assert took < 60, f"the resumed search took {took:.1f}s"
