"""Redis with Sentinel (a primary, a replica, three sentinels): the primary SIGKILLed
mid-job, Sentinel promotes the replica, and the chief and workers, which reach Redis only
through the ``redis+sentinel://`` URL, follow it without a restart. The job completes
and the exactly-once invariant holds (``invariants.assert_exactly_once``); replication is
asynchronous, so the promoted replica may lack the primary's last writes: the chief
notices a changed Redis (run id, round counter) and reloads, as after any rollback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster
from tunecluster.cluster.redis_server import ReplicatedRedis
from tunecluster.store import Store, connect, raw_client

from .conftest import EXAMPLES, FAST_LIVENESS
from .invariants import assert_exactly_once

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

TRIALS = 6
# Small trials: two workers keep one running nearly all the time, so the primary dies
# with trials in flight; the whole test stays near a minute on 2 cores.
JOB = (f"search.max_trials={TRIALS}", "train.epochs=3", "train.early_stopping=null")


def _until(predicate: Callable[[], object], timeout: float, every: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def _completed_and_running(store: Store, job: str) -> bool:
    states = [row.get("state") for row in store.jobs.trials(job)]
    return "COMPLETED" in states and "RUNNING" in states


def _primary_port(ha: ReplicatedRedis) -> int | None:
    """The primary's port as the sentinels' majority names it now."""
    ports = []
    for s in ha.sentinels:
        try:
            with redis.Redis(port=s.port, socket_timeout=1, decode_responses=True) as sentinel:
                addr = sentinel.sentinel_get_master_addr_by_name(ha.service)
        except redis.RedisError:
            continue
        if addr:
            ports.append(int(addr[1]))
    return max(set(ports), key=ports.count) if len(ports) >= 2 else None


def test_the_primary_sigkilled_under_sentinel_fails_over_and_the_job_completes(
        tmp_path: Path) -> None:
    started = time.monotonic()
    with ReplicatedRedis(down_after_ms=1000, failover_timeout_ms=3000) as ha:
        cluster = LocalCluster(workers=2, artifacts=tmp_path / "artifacts",
                               log_dir=tmp_path / "logs", redis_url=ha.url,
                               env=FAST_LIVENESS)
        try:
            cluster.start()
            store = Store.from_url(ha.url)
            assert _primary_port(ha) == ha.primary.port
            _until(ha.ready, timeout=30, every=0.2)
            job = submit(store, prepare_job(EXAMPLES / "digits.yaml", JOB))
            submitted = time.monotonic()
            _until(lambda: _completed_and_running(store, job), timeout=90)

            ha.primary.stop(kill=True)  # SIGKILL: no goodbye to the replica or sentinels
            killed_at = time.monotonic()
            _until(lambda: _primary_port(ha) == ha.replica.port, timeout=30, every=0.1)
            failover_s = time.monotonic() - killed_at

            results = wait(store, job, timeout_s=120)
            assert results["state"] == "completed", results.get("error")
            rows = assert_exactly_once(store, job, TRIALS)
            # The same processes did it all: the roles followed the new primary.
            assert [p.poll() for p in cluster.chiefs + cluster.workers] == [None] * 3
            assert store.client.info("server")["tcp_port"] == ha.replica.port
            assert store.client.info("replication")["role"] == "master"
        finally:
            cluster.stop()
    retried = sum(int(row.get("attempts") or 0) > 1 for row in rows)
    print(f"\nsentinel failover: primary killed {killed_at - submitted:.0f}s after submit"
          f" ({submitted - started:.0f}s to start), replica promoted {failover_s:.1f}s after"
          f" the SIGKILL; {retried} trial(s) retried; test wall time"
          f" {time.monotonic() - started:.0f}s")


def test_a_blocked_reader_and_a_writer_follow_a_failover() -> None:
    """What the roles rely on, without them: after the primary dies, a command re-sent on
    a dropped connection (a blocking stream read included, as the chief's inbox and the
    workers' waits) reconnects to the promoted replica, asking the sentinels again.
    (redis-py alone re-sends on the same connection to its last host, the dead primary,
    until its retries run out: ``store/sentinel.PrimaryConnection``.)"""
    with ReplicatedRedis() as ha:
        client = connect(ha.url, retries=20)
        client.xgroup_create("inbox", "chief", mkstream=True)
        _until(ha.ready, timeout=30, every=0.2)
        received: list[str] = []
        failed: list[BaseException] = []

        def read() -> None:
            try:
                while not received:
                    for _stream, entries in client.xreadgroup(
                            "chief", "c1", {"inbox": ">"}, count=1, block=500) or []:
                        received.extend(fields["n"] for _id, fields in entries)
            except BaseException as exc:  # reported by the test below
                failed.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(0.3)  # the reader is blocked on the primary
        ha.primary.stop(kill=True)
        client.set("after", "1")  # rides out the failover inside its retries
        assert _primary_port(ha) == ha.replica.port
        client.xadd("inbox", {"n": "1"})
        reader.join(30)
        assert not failed, f"the blocked reader gave up: {failed[0]!r}"
        assert received == ["1"]
        raw = raw_client(client)
        assert raw.get("after") == b"1"
        assert raw.info("server")["tcp_port"] == ha.replica.port
