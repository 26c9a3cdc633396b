"""The artifacts store as an object store (issue 15, points 1 and 4), through real
processes: moto's S3 server, Redis, a chief and two workers with ``s3://bucket/prefix``
as their artifacts root and no directory in common (each role stages in its own), a CLI
that has neither S3 credentials nor an endpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.artifact_store import S3Store
from tunecluster.cluster import LocalCluster
from tunecluster.store import Store
from tunecluster.store.results import leaderboard

from .conftest import EXAMPLES, FAST_LIVENESS, cli
from .test_chaos import _running_trial, _until, _worker_pid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SMALL = ("search.max_trials=3", "train.epochs=1", "search.seed=5")
# Slow enough per epoch to be killed mid-trial (as test_chaos's LONG), a little shorter.
LONG = ("search.max_trials=2", "train.epochs=8", "train.batch_size=8",
        "train.steps_per_execution=1", "train.early_stopping=null",
        "search.max_retries_per_trial=1")
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "TUNECLUSTER_S3_ENDPOINT_URL",
            "TUNECLUSTER_ARTIFACTS")


@pytest.fixture(scope="module")
def s3_cluster(s3_env: dict[str, str], s3_bucket: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, str]]:
    base = tmp_path_factory.mktemp("s3cluster")
    url = f"s3://{s3_bucket}/{uuid.uuid4().hex[:8]}/artifacts"
    cluster = LocalCluster(workers=0, artifacts=url, log_dir=base / "logs",
                           env={**FAST_LIVENESS, **s3_env,
                                "TUNECLUSTER_ARTIFACTS_STAGING": str(base / "chief")})
    cluster.start()
    try:
        for i in range(2):  # no shared directory: each worker stages in its own
            cluster.env = {**cluster.env, "TUNECLUSTER_ARTIFACTS_STAGING": str(base / f"w{i}")}
            cluster.start_worker()
        yield cluster, url
    finally:
        cluster.stop()


@pytest.fixture
def objects(s3_env: dict[str, str], s3_cluster: tuple[LocalCluster, str], tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """The test's own view of the bucket (it has the credentials)."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    return S3Store(s3_cluster[1], tmp_path / "view")


def _blind_env(tmp_path: Path) -> dict[str, str]:
    """A client outside the cluster: no S3 credentials, no endpoint, another root (the
    caller takes ``AWS_VARS`` out of os.environ, which ``cli`` starts from)."""
    return {"TUNECLUSTER_ARTIFACTS": str(tmp_path / "not-the-store"),
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def test_s3_job_completes_and_a_blind_client_exports_byte_identical_files(
        s3_cluster, objects: S3Store, tmp_path: Path, monkeypatch) -> None:
    cluster, url = s3_cluster
    store = Store.from_url(cluster.url)
    t0 = time.monotonic()
    results = wait(store, submit(store, prepare_job(EXAMPLES / "digits.yaml", SMALL)), 180)
    took = time.monotonic() - t0
    assert results["state"] == "completed", results.get("error")
    job = results["job"]
    assert results["artifacts"]["dir"] == f"{url}/{job}"
    assert results["artifacts"]["best_model"] == f"{url}/{job}/best_model.keras"
    keys = objects.list(job)
    ranked = leaderboard(results["trials"], results["objective"]["direction"])
    for row in ranked:  # each trial's model and checkpoint are objects in the bucket
        assert row["model"] in keys
        assert row["model"].replace("model.keras", "last.npz") in keys
    assert json.loads(objects.read_bytes(f"{job}/results.json"))["state"] == "completed"
    best_bytes = objects.read_bytes(f"{job}/best_model.keras")
    assert best_bytes == objects.read_bytes(ranked[0]["model"])

    with monkeypatch.context() as m:
        for name in AWS_VARS:
            m.delenv(name, raising=False)
        env = _blind_env(tmp_path)
        export = tmp_path / "best.keras"
        out = cli("best", job, "--export", str(export), "--json", "--redis", cluster.url,
                  env=env)
        assert out.returncode == 0, out.stderr
        assert "downloaded through Redis" in out.stderr
        assert export.read_bytes() == best_bytes
        got = cli("artifacts", job, "-o", str(tmp_path / "out"), "--json",
                  "--redis", cluster.url, env=env)
        assert got.returncode == 0, got.stderr
    where = {f"trials/{r['trial']}/model.keras": r["model"] for r in ranked}
    rows = json.loads(got.stdout)
    assert len(rows) == 2 + len(ranked) and {r["from"] for r in rows} == {"redis"}
    for row in rows:
        key = where.get(row["name"], f"{job}/{row['name']}")
        assert Path(row["path"]).read_bytes() == objects.read_bytes(key), row["name"]
    # A client with credentials and the bucket as its root reads the bucket directly.
    direct = cli("best", job, "--export", str(tmp_path / "direct.keras"), "--redis",
                 cluster.url, env={"TUNECLUSTER_ARTIFACTS": url})
    assert direct.returncode == 0, direct.stderr
    assert f"read from the artifacts store at {url}/{job}/best_model.keras" in direct.stderr
    assert (tmp_path / "direct.keras").read_bytes() == best_bytes
    print(f"\n[s3] job of {len(ranked)} trials on s3:// (moto): {took:.1f} s;"
          f" best model {len(best_bytes)} bytes exported through Redis")


def test_s3_worker_killed_mid_trial_resumes_from_the_checkpoint_in_the_store(
        s3_cluster, objects: S3Store) -> None:
    cluster, _url = s3_cluster
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", LONG))
    victim = _until(lambda: _running_trial(store, job, 3), timeout=120)
    os.killpg(_worker_pid(store, victim["worker"]), signal.SIGKILL)
    saved = int(victim["last_epoch"])
    cluster.env = {**cluster.env, "TUNECLUSTER_ARTIFACTS_STAGING": str(
        Path(cluster.env["TUNECLUSTER_ARTIFACTS_STAGING"]).with_name("w-new"))}
    cluster.start_worker()  # a fresh host: nothing of the dead worker's disk
    results = wait(store, job, 180)
    assert results["state"] == "completed", results.get("error")
    trial = next(t for t in results["trials"] if t["trial"] == victim["trial"])
    assert trial["attempts"] == 2 and trial["state"] == "COMPLETED"
    assert trial["resumed_from_epoch"] >= saved > 0, "the retry started over"
    runs = f"{job}/trials/{victim['trial']}"
    assert re.fullmatch(rf"{runs}/attempt-2-[0-9]+/model\.keras", trial["model"]), trial
    assert [key for key in objects.list(runs)
            if re.fullmatch(rf"{runs}/attempt-1-[0-9]+/last\.npz", key)]
    print(f"\n[s3] worker killed after epoch {saved}: the retry resumed after epoch"
          f" {trial['resumed_from_epoch']} from the store's checkpoint")


def test_s3_delete_artifacts_removes_the_jobs_objects(s3_cluster, objects: S3Store,
                                                      s3_env: dict[str, str]) -> None:
    cluster, url = s3_cluster
    store = Store.from_url(cluster.url)
    results = wait(store, submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                                    ("search.max_trials=1", "train.epochs=1"))),
                   180)
    job = results["job"]
    others = [k for k in objects.list() if not k.startswith(f"{job}/")]
    assert objects.list(job)
    out = cli("delete", job, "--artifacts", "--redis", cluster.url,
              env={**s3_env, "TUNECLUSTER_ARTIFACTS": url})
    assert out.returncode == 0, out.stderr
    assert f"removed {url}/{job}" in out.stdout
    assert objects.list(job) == []
    assert [k for k in objects.list() if not k.startswith(f"{job}/")] == others
    assert not store.client.exists(store.keys.job(job))
