"""Bounded state and safe paths through real processes (issue 10, points 4 and 13):
uploads freed when a job ends, ``tunecluster delete`` leaving no trace in Redis, ids from
Redis never leaving the artifacts root, and data read only from uploads or a data root."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tunecluster.api.submission import prepare_job, search_space, submit, wait
from tunecluster.spec import parse_spec
from tunecluster.store import Store, member, raw_client

from .conftest import EXAMPLES, cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TINY = ("search.max_trials=2", "train.epochs=1")


def _names(store: Store, job: str) -> list[str]:
    """Every key, and every member of a zset or list, anywhere in Redis naming the job."""
    r = store.client
    raw = raw_client(r)  # lists may hold bytes (published downloads of other jobs)
    found = []
    for key in r.scan_iter(count=1000):
        if job in key:
            found.append(key)
        kind = r.type(key)
        if kind == "zset":
            found += [f"{key} {m}" for m in r.zrange(key, 0, -1) if job in m]
        elif kind == "list":
            found += [f"{key} {m!r}" for m in raw.lrange(key, 0, -1) if job.encode() in m]
    return found


def _until(predicate, timeout: float = 60, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def _csv_job(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    rows = ["a,b,c,y", *(f"{a:.4f},{b:.4f},{c:.4f},{a + 2 * b:.4f}" for a, b, c in x)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(textwrap.dedent("""
        name: retention-csv
        data: {path: train.csv, target: y}
        model:
          builtin: mlp
          task: regression
          input: normalize
          hyperparameters:
            n_hidden: {fixed: 1}
            n_neurons: {choice: [8, 16]}
        search: {algorithm: random, objective: val_loss, max_trials: 2}
        train: {epochs: 1, batch_size: 32}
    """))
    return spec


def test_uploads_are_freed_at_the_end_and_delete_leaves_no_trace(store, cluster,
                                                                 tmp_path: Path) -> None:
    job = submit(store, prepare_job(_csv_job(tmp_path)))
    assert list(store.client.scan_iter(match=f"tc:job:{job}:file:*"))  # uploaded
    assert wait(store, job, 60)["state"] == "completed"
    assert list(store.client.scan_iter(match=f"tc:job:{job}:file:*")) == []
    assert (cluster.artifacts / job / "best_model.keras").is_file()

    root = ["--artifacts-root", str(cluster.artifacts), "--redis", cluster.url]
    out = cli("delete", job, "--artifacts", *root)
    assert out.returncode == 0, out.stderr
    assert job in out.stdout
    assert _names(store, job) == []
    assert not (cluster.artifacts / job).exists()
    assert not (cluster.artifacts / ".cache" / job).exists()
    listed = cli("list", "--json", "--redis", cluster.url)
    assert job not in {row["job"] for row in json.loads(listed.stdout)}

    again = cli("delete", job, *root)
    assert again.returncode == 1 and len(again.stderr.splitlines()) == 1
    assert f"no job '{job}'" in again.stderr
    hostile = cli("delete", "../../etc", *root)
    assert hostile.returncode == 2 and len(hostile.stderr.splitlines()) == 1
    assert "JOB" in hostile.stderr


def test_delete_force_cancels_a_running_job_and_nothing_comes_back(store, cluster) -> None:
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.max_trials=4", "train.epochs=30", "train.batch_size=8",
        "train.early_stopping=null")))
    _until(lambda: any(t.get("state") == "RUNNING" and t.get("last_epoch")
                       for t in store.jobs.trials(job)))
    plain = cli("delete", job, "--redis", cluster.url)
    assert plain.returncode == 1 and "--force" in plain.stderr
    assert len(plain.stderr.splitlines()) == 1

    started = time.monotonic()
    out = cli("delete", job, "--force", "--redis", cluster.url)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert _names(store, job) == []
    time.sleep(2)  # a racing chief or worker must not resurrect anything
    assert _names(store, job) == []
    assert all(p.poll() is None for p in cluster.workers + cluster.chiefs)
    print(f"delete --force of a running job took {took:.1f}s")


def test_foreign_ids_in_redis_never_become_paths(store, cluster) -> None:
    r, k = store.client, store.keys
    spec = {"name": "x", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"},
            "search": {"max_trials": 1}, "train": {"epochs": 1}}
    space = json.dumps(search_space(parse_spec(spec)))
    hostile = ["..", "../../etc"]  # ".." is claimable: "../00" splits into "..", "00"
    for job in hostile:
        r.hset(k.job(job), mapping={"id": job, "name": "x", "state": "queued",
                                    "spec": json.dumps(spec), "space": space, "created": 1,
                                    "scheduler": "native", "files": "[]"})
        r.zadd(k.jobs_active, {job: 0})
        r.xadd(k.inbox, {"type": "end", "job": job, "trial": "00", "state": "COMPLETED"})
    r.hset(k.trial("job-abc123", "../../../x"), mapping={"state": "READY", "attempts": 0,
                                                        "values": "{}"})
    r.rpush(k.ready, member("job-abc123", "../../../x"))

    results = wait(store, submit(store, prepare_job(EXAMPLES / "digits.yaml", TINY)), 60)
    assert results["state"] == "completed"
    _until(lambda: r.hget(k.job(".."), "state") in ("completed", "failed"), 30)
    base = cluster.artifacts.parent
    assert not (base / "trials").exists() and not (base / "results.json").exists()
    assert not (base.parent / "etc").exists() and not (base / "x").exists()
    for job in hostile:
        _until(lambda job=job: r.hget(k.job(job), "state") == "failed", 10)
        assert "not a job id" in r.hget(k.job(job), "error")
    assert r.llen(k.ready) == 0 and r.zcard(k.leases) == 0
    assert all(p.poll() is None for p in cluster.workers + cluster.chiefs)


def test_data_neither_uploaded_nor_under_a_data_root_is_refused(store, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("TOP-SECRET-FIRST-LINE,v\n1,2\n3,4\n")
    spec = {"name": "leak", "data": {"path": str(secret), "target": "nothere"},
            "model": {"builtin": "mlp", "task": "regression", "input": "normalize"},
            "search": {"max_trials": 1, "objective": "val_loss"}, "train": {"epochs": 1}}
    job = store.jobs.submit("leak", json.dumps(spec), search_space(parse_spec(spec)), 0,
                            "native", {})
    results = wait(store, job, 60)
    assert results["state"] == "failed"
    texts = [results["error"], *(t["error"] for t in results["trials"])]
    for text in texts:
        assert "TOP-SECRET" not in text and "\n" not in text
    assert str(secret) in results["trials"][0]["error"]
    assert "TUNECLUSTER_DATA_ROOT" in results["trials"][0]["error"]
    trial = store.jobs.trial(job, results["trials"][0]["trial"])
    assert "TOP-SECRET" not in trial.get("traceback", "")
