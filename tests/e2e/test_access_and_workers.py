"""Workers' trial processes are recycled (the memory bound), Redis credentials are
enforced by every role, and workers can refuse jobs that carry code."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster, RedisServer
from tunecluster.store import Store

from .conftest import EXAMPLES, FAST_LIVENESS, cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


def test_trial_process_is_recycled_every_n_trials(tmp_path: Path) -> None:
    env = {**FAST_LIVENESS, "TUNECLUSTER_TRIALS_PER_CHILD": "2"}
    with LocalCluster(workers=1, artifacts=tmp_path / "a", env=env) as cluster:
        store = Store.from_url(cluster.url)
        job = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                        ("search.max_trials=5", "train.epochs=1")))
        results = wait(store, job, 300)
        assert results["state"] == "completed"
        rows = store.jobs.trials(job)
        pids = [json.loads(r["result"])["process"] for r in rows]
        # 5 trials, 2 per process: at least 3 distinct trial processes, one worker
        assert len(set(pids)) >= 3, pids
        assert len({r["worker"] for r in rows}) == 1
        assert cluster.workers[0].poll() is None


def test_trial_process_past_memory_limit_is_replaced(tmp_path: Path) -> None:
    env = {**FAST_LIVENESS, "TUNECLUSTER_CHILD_MAX_RSS_MB": "1"}
    with LocalCluster(workers=1, artifacts=tmp_path / "a", env=env) as cluster:
        store = Store.from_url(cluster.url)
        job = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                        ("search.max_trials=2", "train.epochs=1")))
        assert wait(store, job, 300)["state"] == "completed"
        pids = [json.loads(r["result"])["process"] for r in store.jobs.trials(job)]
        assert len(set(pids)) == 2


def test_roles_fail_fast_with_wrong_credentials_and_work_with_an_acl_user(tmp_path) -> None:
    with RedisServer(password="adminpw") as server:
        admin = Store.from_url(server.url)
        admin.client.execute_command("ACL", "SETUSER", "tuner", "on", ">tunerpw", "~*", "&*",
                                     "+@all")
        good = server.url.replace(":adminpw@", "tuner:tunerpw@")
        wrong = server.url.replace(":adminpw@", "tuner:nope@")
        missing = server.url.replace(":adminpw@", "")
        for role in ("chief", "worker"):
            for url in (wrong, missing):
                t0 = time.monotonic()
                out = cli(role, "--redis", url, "--artifacts", str(tmp_path), timeout=60)
                assert out.returncode == 1, (role, out.stderr)
                assert "authentication failed" in out.stderr.lower(), out.stderr
                assert time.monotonic() - t0 < 30
        out = cli("submit", str(EXAMPLES / "digits.yaml"), "--redis", wrong)
        assert out.returncode == 1 and "authentication failed" in out.stderr.lower()
        assert admin.jobs.all() == []
        with LocalCluster(workers=1, artifacts=tmp_path / "a", redis_url=good,
                          env=FAST_LIVENESS) as cluster:
            store = Store.from_url(cluster.url)
            job = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                            ("search.max_trials=1", "train.epochs=1")))
            assert wait(store, job, 300)["state"] == "completed"


def test_workers_can_refuse_jobs_that_carry_code(tmp_path: Path) -> None:
    env = {**FAST_LIVENESS, "TUNECLUSTER_ALLOW_CODE_UPLOAD": "0"}
    with LocalCluster(workers=1, artifacts=tmp_path / "a", env=env) as cluster:
        store = Store.from_url(cluster.url)
        custom = submit(store, prepare_job(EXAMPLES / "custom.yaml",
                                           ("search.max_trials=1", "train.epochs=1")))
        results = wait(store, custom, 300)
        assert results["state"] == "failed"
        assert "ALLOW_CODE_UPLOAD" in results["trials"][0]["error"]
        builtin = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                            ("search.max_trials=1", "train.epochs=1")))
        assert wait(store, builtin, 300)["state"] == "completed"


def test_health_probes(tmp_path: Path) -> None:
    with LocalCluster(workers=1, artifacts=tmp_path / "a", env=FAST_LIVENESS) as cluster:
        store = Store.from_url(cluster.url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                store.client.get(store.keys.chief_beat) and store.workers.live(4)):
            time.sleep(0.2)
        for role in ("redis", "chief", "worker"):
            out = cli("health", "--role", role, "--redis", cluster.url)
            assert out.returncode == 0, (role, out.stdout, out.stderr)
    out = subprocess.run([sys.executable, "-m", "tunecluster", "health", "--redis",
                          "redis://127.0.0.1:1/0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
