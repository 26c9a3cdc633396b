"""The control plane's contract, against a real Redis on a free loopback port."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from tunecluster.cluster import RedisServer
from tunecluster.errors import StoreError
from tunecluster.store import Keys, LostLease, Store, member
from tunecluster.store.connection import AuthFailed, connect, redact
from tunecluster.store.results import build_results

SPEC = {"name": "job", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"},
        "search": {"objective": {"name": "val_accuracy", "direction": "max"}}}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
def store(server: RedisServer) -> Store:
    s = Store.from_url(server.url)
    s.client.flushdb()
    return s


def _job_with_trials(store: Store, n: int, max_retries: int = 1) -> str:
    job = store.jobs.submit("job", json.dumps(SPEC), {}, 0, "native")
    for i in range(n):
        store.queue.enqueue(job, f"{i:02d}", {"x": i}, max_retries, "{}")
    return job


def test_key_schema_is_pinned() -> None:
    k = Keys("tc")
    assert [k.jobs_active, k.jobs_all, k.job("j"), k.job_file("j", "f"), k.oracle("j"),
            k.oracle_trials("j"), k.trials("j"), k.trial("j", "t"), k.epochs("j", "t"),
            k.events("j"), k.ready, k.leases, k.inbox, k.wake, k.workers, k.worker("w"),
            k.chief_lock, k.chief_beat] == [
        "tc:jobs", "tc:jobs:all", "tc:job:j", "tc:job:j:file:f", "tc:job:j:oracle",
        "tc:job:j:oracle:trials", "tc:job:j:trials", "tc:job:j:trial:t", "tc:job:j:trial:t:epochs", "tc:job:j:events",
        "tc:ready", "tc:leases", "tc:inbox", "tc:wake", "tc:workers", "tc:worker:w",
        "tc:chief:lock", "tc:chief:lock:beat"]


def test_claims_are_exclusive_under_concurrency(store: Store) -> None:
    job = _job_with_trials(store, 40)
    claimed: list[str] = []
    lock = threading.Lock()

    def grab(worker: str) -> None:
        while (c := store.queue.claim(worker, 30)) is not None:
            with lock:
                claimed.append(c.trial)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"{i:02d}" for i in range(40)]
    assert store.queue.running_count() == 40
    assert store.jobs.trial(job, "00")["state"] == "RUNNING"


def test_stale_attempt_cannot_report_or_finish(store: Store) -> None:
    job = _job_with_trials(store, 1, max_retries=2)
    first = store.queue.claim("w1", 30)
    assert first is not None and first.attempt == 1
    assert store.queue.release(job, "00", "worker lost") == 1  # back to READY
    second = store.queue.claim("w2", 30)
    assert second is not None and second.attempt == 2
    with pytest.raises(LostLease):
        store.queue.report_epoch(first, "w1", 1, {"val_accuracy": 0.5})
    assert not store.queue.finish(first, "w1", "COMPLETED", {"score": "0.5"})
    assert store.queue.report_epoch(second, "w2", 1, {"val_accuracy": 0.6}) == 0
    assert store.queue.finish(second, "w2", "COMPLETED", {"score": "0.6"})
    assert not store.queue.finish(second, "w2", "COMPLETED", {"score": "0.6"})  # idempotent
    row = store.jobs.trial(job, "00")
    assert row["state"] == "COMPLETED" and row["score"] == "0.6" and row["attempts"] == "2"


def test_release_fails_the_trial_when_retries_are_spent(store: Store) -> None:
    job = _job_with_trials(store, 1, max_retries=0)
    store.queue.claim("w1", 30)
    assert store.queue.release(job, "00", "worker lost: its lease expired") == 2
    row = store.jobs.trial(job, "00")
    assert row["state"] == "FAILED" and "worker lost" in row["error"]
    assert store.queue.claim("w2", 30) is None


def test_release_on_shutdown_does_not_spend_an_attempt(store: Store) -> None:
    job = _job_with_trials(store, 1, max_retries=0)
    claim = store.queue.claim("w1", 30)
    assert claim is not None
    assert store.queue.release(job, "00", "worker shut down", worker="w1", attempt=1,
                               count_attempt=False) == 1
    again = store.queue.claim("w2", 30)
    assert again is not None and again.attempt == 1


def test_expired_leases_are_found_and_renewal_keeps_them(store: Store) -> None:
    _job_with_trials(store, 2)
    a = store.queue.claim("w1", 0.2)
    b = store.queue.claim("w2", 0.2)
    assert a and b
    time.sleep(0.3)
    assert store.queue.renew("w1", [a.member], 30) == 1
    assert store.queue.renew("w1", [b.member], 30) == 0  # not w1's trial
    assert store.queue.expired() == [b.member]


def test_report_answers_stop_and_cancel(store: Store) -> None:
    job = _job_with_trials(store, 1)
    claim = store.queue.claim("w1", 30)
    assert claim is not None
    store.queue.request_stop(job, "00")
    assert store.queue.report_epoch(claim, "w1", 1, {"val_accuracy": 0.1}) == 1
    store.jobs.request_cancel(job)
    assert store.queue.report_epoch(claim, "w1", 2, {"val_accuracy": 0.2}) == 2
    assert sorted(store.jobs.epochs(job, "00")) == [1, 2]


def test_results_document_ranks_by_direction(store: Store) -> None:
    job = _job_with_trials(store, 3)
    for score in (0.2, 0.9, 0.5):
        c = store.queue.claim("w", 30)
        assert c is not None
        store.queue.finish(c, "w", "COMPLETED", {"score": repr(score), "metrics": {"a": 1}})
    results = build_results(store.jobs, job)
    assert results["best"]["score"] == 0.9
    assert results["objective"] == {"name": "val_accuracy", "direction": "max"}
    assert results["counts"] == {"COMPLETED": 3}


def test_foreign_data_gives_clear_errors(store: Store) -> None:
    with pytest.raises(StoreError, match="no job 'nope'"):
        store.jobs.get("nope")
    store.client.hset(store.keys.job("broken"), mapping={"name": "x", "spec": "{trunc"})
    with pytest.raises(StoreError, match="not valid JSON"):
        store.jobs.get("broken")
    # a malformed ready entry is skipped, not fatal
    store.client.rpush(store.keys.ready, "garbage-without-slash", member("nojob", "t"))
    assert store.queue.claim("w", 30) is None


def test_submit_is_all_or_nothing_and_files_roundtrip(store: Store) -> None:
    from tunecluster.store import raw_client

    job = store.jobs.submit("job", json.dumps(SPEC), {"space": []}, 5, "native",
                            {"/data/x.csv": b"a,b\n1,2\n"})
    assert store.jobs.get(job).state == "queued"
    assert store.jobs.active() == [job]
    assert store.jobs.file(raw_client(store.client), job, "/data/x.csv") == b"a,b\n1,2\n"


def test_wrong_password_fails_fast_with_a_clear_message() -> None:
    with RedisServer(password="s3cret") as server:
        assert connect(server.url).ping()
        wrong = server.url.replace("s3cret", "nope")
        with pytest.raises(AuthFailed, match="authentication failed"):
            connect(wrong)
        with pytest.raises(AuthFailed):
            connect(server.url.replace(":s3cret@", ""))
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
