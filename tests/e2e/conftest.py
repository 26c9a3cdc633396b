"""Fixtures that start real processes: a Redis server on a free loopback port, a chief
and workers (the same CLI a deployment runs), and helpers to submit and wait."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster
from tunecluster.store import Store

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Short liveness periods so that failure scenarios resolve in seconds.
FAST_LIVENESS = {"TUNECLUSTER_LEASE_S": "4", "TUNECLUSTER_HEARTBEAT_S": "0.5",
                 "TUNECLUSTER_CHIEF_LOCK_S": "4"}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One shared cluster (Redis + chief + 2 workers) for the tests that only submit jobs."""
    base = tmp_path_factory.mktemp("cluster")
    with LocalCluster(workers=2, artifacts=base / "artifacts", log_dir=base / "logs",
                      env=FAST_LIVENESS) as c:
        yield c


@pytest.fixture(scope="session")
def store(cluster: LocalCluster) -> Store:
    return Store.from_url(cluster.url)


def run_job(store: Store, spec: str | Path, *overrides: str, timeout_s: float = 240) -> dict:
    job = submit(store, prepare_job(spec, overrides))
    return wait(store, job, timeout_s=timeout_s)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunecluster", *args], capture_output=True,
                          text=True, timeout=timeout, input=stdin,
                          env={**os.environ, **(env or {})})
