"""Results and models reach a client that cannot see the artifacts store (issue 15,
points 2 and 3), through real processes: the CLI runs with an artifacts root that does
not hold the job, as a laptop or the host of a compose stack would."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster
from tunecluster.store import Store, raw_client
from tunecluster.store.results import leaderboard

from .conftest import EXAMPLES, FAST_LIVENESS, cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SMALL = ("search.max_trials=4", "train.epochs=1", "search.seed=3")


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _download_keys(store: Store, job: str) -> list[str]:
    return list(store.client.scan_iter(match=f"tc:job:{job}:download*"))


def test_best_and_artifacts_download_byte_identical_files(store, cluster,
                                                          tmp_path: Path) -> None:
    results = wait(store, submit(store, prepare_job(EXAMPLES / "digits.yaml", SMALL)), 240)
    assert results["state"] == "completed", results.get("error")
    job = results["job"]
    ranked = leaderboard(results["trials"], results["objective"]["direction"])
    assert len(ranked) == 4
    worker_file = {t["trial"]: cluster.artifacts / t["model"] for t in ranked}
    blind = ["--redis", cluster.url, "--artifacts", str(tmp_path / "not-the-store")]

    # best --export: downloaded through Redis, the same bytes the worker wrote
    export = tmp_path / "best.keras"
    t0 = time.monotonic()
    out = cli("best", job, "--export", str(export), "--json", *blind)
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert len(_lines(out.stderr)) == 1 and "downloaded through Redis" in out.stderr
    assert json.loads(out.stdout)["exported_from"] == "redis"
    assert export.read_bytes() == worker_file[ranked[0]["trial"]].read_bytes()
    assert export.read_bytes() == (cluster.artifacts / job / "best_model.keras").read_bytes()
    print(f"\n[downloads] best --export of {export.stat().st_size} bytes through Redis:"
          f" {took:.2f} s (CLI process included)")

    # artifacts -o DIR: results.json, the best model and the top-3 trials' models
    target = tmp_path / "out"
    out = cli("artifacts", job, "-o", str(target), "--json", *blind)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    top3 = [f"trials/{t['trial']}/model.keras" for t in ranked[:3]]
    assert [r["name"] for r in rows] == ["results.json", "best_model.keras", *top3]
    assert {r["from"] for r in rows} == {"redis"} and len(_lines(out.stderr)) == 5
    assert (target / "results.json").read_bytes() == \
        (cluster.artifacts / job / "results.json").read_bytes()
    for t in ranked[:3]:
        got = target / "trials" / t["trial"] / "model.keras"
        assert got.read_bytes() == worker_file[t["trial"]].read_bytes()

    # the 4th trial is not published: the error says so, where it is and how to reach it
    fourth = ranked[3]["trial"]
    out = cli("artifacts", job, "--trial", fourth, "-o", str(target), *blind)
    assert out.returncode == 1 and len(_lines(out.stderr)) == 1, out.stderr
    assert "only the best 3 trials" in out.stderr
    assert str(worker_file[fourth]) in out.stderr and "--artifacts" in out.stderr
    # ... and a client that sees the store reads it there (and says so)
    out = cli("artifacts", job, "--trial", fourth, "-o", str(target), "--redis", cluster.url,
              "--artifacts", str(cluster.artifacts))
    assert out.returncode == 0, out.stderr
    assert "read from the artifacts store" in out.stderr
    assert (target / "trials" / fourth / "model.keras").read_bytes() == \
        worker_file[fourth].read_bytes()
    out = cli("best", job, "--export", str(tmp_path / "local.keras"), "--redis", cluster.url,
              "--artifacts", str(cluster.artifacts))
    assert out.returncode == 0 and "sha256 verified" in out.stderr, out.stderr
    assert "read from the artifacts store" in out.stderr

    # a tampered chunk fails the checksum: one line, nothing written
    sha = json.loads(store.client.hget(store.keys.downloads(job), "best_model.keras"))["sha256"]
    raw = raw_client(store.client)
    blob = store.keys.download_blob(job, sha)
    chunk = raw.lindex(blob, 0)
    raw.lset(blob, 0, chunk[:1000] + b"tampered" + chunk[1008:])
    bad = tmp_path / "bad.keras"
    out = cli("best", job, "--export", str(bad), *blind)
    assert out.returncode == 1 and len(_lines(out.stderr)) == 1, out.stderr
    assert "fails its checksum" in out.stderr and not bad.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bad")] == []

    # delete leaves no download key
    assert _download_keys(store, job)
    out = cli("delete", job, "--redis", cluster.url)
    assert out.returncode == 0, out.stderr
    assert _download_keys(store, job) == []
    assert list(store.client.scan_iter(match=f"*{job}*")) == []


def test_over_the_limit_the_error_names_the_store_path(tmp_path: Path) -> None:
    env = {**FAST_LIVENESS, "TUNECLUSTER_MAX_DOWNLOAD_BYTES": "4096"}
    with LocalCluster(workers=1, artifacts=tmp_path / "store", log_dir=tmp_path / "logs",
                      env=env) as cluster:
        store = Store.from_url(cluster.url)
        job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
            "search.max_trials=1", "train.epochs=1")))
        assert wait(store, job, 180)["state"] == "completed"
        blind = ["--redis", cluster.url, "--artifacts", str(tmp_path / "elsewhere")]
        out = cli("best", job, "--export", str(tmp_path / "m.keras"), *blind)
        assert out.returncode == 1 and len(_lines(out.stderr)) == 1, out.stderr
        path = cluster.artifacts / job / "best_model.keras"
        assert "over the download limit" in out.stderr
        assert "TUNECLUSTER_MAX_DOWNLOAD_BYTES=4096" in out.stderr
        assert str(path) in out.stderr and "no exported model" not in out.stderr
        assert not (tmp_path / "m.keras").exists()
        # only what fits was published: results.json
        index = store.client.hgetall(store.keys.downloads(job))
        published = {n for n, v in index.items() if json.loads(v)["published"]}
        assert published == {"results.json"}


def test_the_python_client_gets_the_best_model_through_the_cluster(cluster,
                                                                    tmp_path: Path) -> None:
    """``Job.best_model()`` on a machine that cannot see the artifacts store (a laptop):
    the model comes through Redis, verified, and is the chief's best model."""
    import numpy as np

    from tunecluster.api import Client

    client = Client(cluster.url, artifacts=tmp_path / "not-the-cluster")
    job = client.submit(EXAMPLES / "digits.yaml", ("search.max_trials=2", "train.epochs=1"))
    assert job.wait(240)["state"] == "completed"
    model = job.best_model(compile=False)
    assert job.last_fetch is not None and "downloaded through Redis" in job.last_fetch
    import keras

    chief_copy = keras.models.load_model(cluster.artifacts / job.id / "best_model.keras",
                                         compile=False)
    for ours, theirs in zip(model.get_weights(), chief_copy.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # where it can see the store, the same call reads it there
    local = Client(cluster.url, artifacts=cluster.artifacts).job(job.id)
    local.best_model(compile=False)
    assert local.last_fetch is not None and "read from the artifacts store" in local.last_fetch
