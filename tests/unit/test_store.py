"""The control plane's contract, against a real Redis on a free loopback port."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import redis

from tunecluster.cluster import RedisServer
from tunecluster.errors import StoreError
from tunecluster.store import Keys, LostLease, Store, member
from tunecluster.store.connection import AuthFailed, connect, redact
from tunecluster.store.fence import Fence, LostLeadership, StaleState, Writes
from tunecluster.store.queue import Reaped, server_ms
from tunecluster.store.results import build_results

SPEC = {"name": "job", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"},
        "search": {"objective": {"name": "val_accuracy", "direction": "max"}}}


def _job_with_trials(store: Store, n: int, max_retries: int = 1) -> str:
    job = store.jobs.submit("job", json.dumps(SPEC), {}, 0, "native")
    for i in range(n):
        store.queue.enqueue(job, f"{i:02d}", {"x": i}, max_retries, "{}")
    return job


def test_key_schema_is_pinned() -> None:
    k = Keys("tc")
    assert [k.jobs_active, k.jobs_all, k.job("j"), k.job_file("j", "f"), k.oracle("j"),
            k.oracle_trials("j"), k.trials("j"), k.trial("j", "t"), k.epochs("j", "t"),
            k.trial_errors("j", "t"), k.events("j"), k.ready, k.leases, k.inbox, k.wake,
            k.workers, k.worker("w"), k.chief_lock, k.chief_beat, k.chief_seq,
            k.reaper_last, k.reaper_grace, k.request("r"), k.downloads("j"),
            k.download_blob("j", "h"), k.download_part("j", "h"), k.telemetry_counts,
            k.telemetry_hist("h"), k.forming, k.trial_sync("j", "t")] == [
        "tc:jobs", "tc:jobs:all", "tc:job:j", "tc:job:j:file:f", "tc:job:j:oracle",
        "tc:job:j:oracle:trials", "tc:job:j:trials", "tc:job:j:trial:t",
        "tc:job:j:trial:t:epochs", "tc:job:j:trial:t:errors", "tc:job:j:events",
        "tc:ready", "tc:leases", "tc:inbox", "tc:wake", "tc:workers", "tc:worker:w",
        "tc:chief:lock", "tc:chief:lock:beat", "tc:chief:seq", "tc:reaper:last",
        "tc:reaper:grace", "tc:req:r", "tc:job:j:downloads", "tc:job:j:download:h",
        "tc:job:j:download:h:part", "tc:telemetry:counts", "tc:telemetry:hist:h",
        "tc:forming", "tc:job:j:trial:t:sync"]


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


def _snapshot(store: Store) -> dict[str, object]:
    """Everything in Redis, by content (DUMP's byte order of a hash is not stable)."""
    r, out = store.client, {}
    for key in r.keys("*"):
        kind = r.type(key)
        out[key] = {"hash": lambda k: r.hgetall(k), "string": lambda k: r.get(k),
                    "list": lambda k: r.lrange(k, 0, -1),
                    "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
                    "stream": lambda k: r.xrange(k)}.get(kind, lambda k, t=kind: t)(key)
    return out


def _lead(store: Store, token: str = "chief-a") -> Fence:
    store.client.set(store.keys.chief_lock, token)
    return Fence(store.keys.chief_lock, token)


def test_expired_leases_are_reaped_and_renewal_keeps_them(store: Store) -> None:
    job = _job_with_trials(store, 2)
    fence = _lead(store)
    assert store.queue.reap(fence, 60_000, 60_000) == Reaped()  # the reaper's first pass
    a = store.queue.claim("w1", 0.2)
    b = store.queue.claim("w2", 0.2)
    assert a and b
    time.sleep(0.3)
    assert store.queue.renew("w1", [a.member], 30) == 1
    assert store.queue.renew("w1", [b.member], 30) == 0  # not w1's trial
    assert store.queue.reap(fence, 60_000, 60_000) == Reaped(retried=1)
    assert store.jobs.trial(job, b.trial)["state"] == "READY"
    assert store.jobs.trial(job, a.trial)["state"] == "RUNNING"


def test_a_stalled_reaper_gives_every_lease_a_grace_period(store: Store) -> None:
    job = _job_with_trials(store, 1)
    fence = _lead(store)
    store.queue.reap(fence, 60_000, 60_000)
    claim = store.queue.claim("w1", 0.1)
    assert claim is not None
    time.sleep(0.4)  # longer than the stall threshold below: Redis "was away"
    assert store.queue.reap(fence, 200, 5_000) == Reaped()  # expired, but spared
    assert store.jobs.trial(job, claim.trial)["state"] == "RUNNING"
    assert store.queue.renew("w1", [claim.member], 30) == 1  # the worker comes back


def test_a_deposed_chief_writes_nothing(store: Store) -> None:
    job = _job_with_trials(store, 2)
    claim = store.queue.claim("w1", 0.05)
    assert claim is not None
    time.sleep(0.1)
    _lead(store, "chief-b")  # another chief holds the lock
    stale = Fence(store.keys.chief_lock, "chief-a")
    before = _snapshot(store)
    with pytest.raises(LostLeadership):
        store.queue.reap(stale, 60_000, 0)
    with pytest.raises(LostLeadership):
        store.queue.request_stop(job, claim.trial, stale)
    with pytest.raises(LostLeadership):
        store.queue.cancel_ready(job, "01", "job ended", stale)
    with pytest.raises(LostLeadership):
        store.jobs.set_state(job, "failed", fence=stale, error="x")
    with pytest.raises(LostLeadership):
        Writes().set("tc:anything", "1").apply(store.client, stale)
    assert _snapshot(store) == before
    assert Fence(store.keys.chief_lock, "chief-b").release(store.client)
    assert not stale.release(store.client)


def test_fenced_writes_are_all_or_nothing_idempotent_and_sequenced(store: Store) -> None:
    fence = _lead(store)
    writes = Writes().set("tc:x", "1").hset("tc:h", mapping={"a": 1, "b": "2"}).rpush("tc:l", "v")
    request = store.keys.request("round-1")
    assert writes.apply(store.client, fence, request, (store.keys.chief_seq, 0)) == 3
    # a retry of the same step (its reply was lost) applies nothing twice
    assert writes.apply(store.client, fence, request, (store.keys.chief_seq, 0)) == 0
    assert store.client.lrange("tc:l", 0, -1) == ["v"]
    assert store.client.get(store.keys.chief_seq) == "1"
    # Redis "lost" the last commit: the counter no longer matches what the chief holds
    store.client.set(store.keys.chief_seq, "0")
    with pytest.raises(StaleState):
        Writes().set("tc:y", "1").apply(store.client, fence, "", (store.keys.chief_seq, 1))
    assert store.client.get("tc:y") is None


def test_claim_and_finish_are_safe_to_retry(store: Store) -> None:
    """redis-py re-sends a script after a dropped connection: the same request key must
    answer with the first run's reply instead of claiming (or finishing) again."""
    job = _job_with_trials(store, 2)
    request = store.keys.request("claim-1")
    args = [store.keys.p, "w1", 30_000]
    first = store.queue._claim(keys=store.queue._claim_keys(request), args=args)
    again = store.queue._claim(keys=store.queue._claim_keys(request), args=args)
    assert first == again
    assert store.queue.running_count() == 1 and store.queue.ready_count() == 1
    claim = store.queue.claim("w1", 30)  # a new request claims the other trial
    assert claim is not None and claim.trial != first[1]
    done = store.keys.request("finish-1")
    fin = [store.keys.p, job, claim.trial, "w1", claim.attempt, "COMPLETED", '{"score": "0.5"}']
    keys = store.queue._finish_keys(done)
    assert store.queue._finish(keys=keys, args=fin) == 1
    assert store.queue._finish(keys=keys, args=fin) == 1  # the retry: still "recorded"
    assert store.client.xlen(store.keys.inbox) == 2  # submit + one end, not two


def test_a_refused_report_writes_nothing(store: Store) -> None:
    job = _job_with_trials(store, 1)
    claim = store.queue.claim("w1", 30)
    assert claim is not None
    before = _snapshot(store)
    with pytest.raises(redis.ResponseError, match="cannot be encoded"):
        store.queue._report(keys=[store.keys.inbox], args=[
            store.keys.p, job, claim.trial, "w1", claim.attempt, 1,
            '{"val_accuracy": 0.5, "odd": -Infinity}'])
    assert _snapshot(store) == before
    # non-finite side metrics travel as null and the trial goes on
    assert store.queue.report_epoch(claim, "w1", 1, {"val_accuracy": 0.5, "odd": None}) == 0
    assert store.jobs.epochs(job, claim.trial) == {1: {"val_accuracy": 0.5, "odd": None}}


def test_heartbeats_use_redis_time(store: Store) -> None:
    store.workers.heartbeat("w1", {"slots": 2, "beat": 1}, ttl_s=5)
    score = store.client.zscore(store.keys.workers, "w1")
    assert abs(score - server_ms(store.client)) < 5_000
    assert store.workers.total_slots(10) == 2


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


class _ReplyDropper:
    """A TCP proxy to Redis that, once armed, lets the next command through and then
    cuts the connection before its reply comes back: the call happened, the caller
    never heard, and redis-py re-sends it on a new connection."""

    def __init__(self, port: int, trigger: bytes) -> None:
        self.upstream, self.trigger, self.armed, self.dropped = port, trigger, False, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            state = {"pending": False}
            threading.Thread(target=self._pump, args=(client, upstream, state, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, state, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, request: bool) -> None:
        try:
            while data := src.recv(65536):
                if request and self.armed and self.trigger in data:
                    self.armed, state["pending"] = False, True
                elif not request and state["pending"]:
                    self.dropped += 1
                    src.close()
                    dst.close()
                    return
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()


def test_a_claim_whose_reply_was_lost_is_not_claimed_twice(server: RedisServer) -> None:
    store = Store.from_url(server.url)
    store.client.flushdb()
    job = _job_with_trials(store, 2)
    proxy = _ReplyDropper(server.port, trigger=b"EVALSHA")
    try:
        through = Store.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        through.queue.claim("warm-up", 30)  # loads the script; release what it took
        assert store.queue.release(job, "00", "warm-up", count_attempt=False) == 1
        proxy.armed = True
        claim = through.queue.claim("w1", 30)
        assert proxy.dropped == 1 and claim is not None
        assert store.queue.running_count() == 1, "the retried claim took a second trial"
        assert store.queue.ready_count() == 1
    finally:
        proxy.close()


def test_a_job_moves_only_along_its_lifecycle(store: Store) -> None:
    """``set_state`` refuses a move the lifecycle does not make (states.py's table);
    a record whose state cannot be trusted is quarantined all the same."""
    from tunecluster.states import JobState

    job = store.jobs.submit("job", json.dumps(SPEC), {}, 0, "native")
    with pytest.raises(StoreError, match="cannot move from queued to completed"):
        store.jobs.set_state(job, JobState.COMPLETED)
    assert store.jobs.get(job).state is JobState.QUEUED
    for state in ("running", "finalizing", "completed", "queued"):  # ... and resumed
        store.jobs.set_state(job, state)
    with pytest.raises(StoreError, match="'done' is not a job state"):
        store.jobs.set_state(job, "done")
    store.client.hset(store.keys.job(job), "state", "garbage")
    assert store.jobs.quarantine(job, "cannot be read")
    assert store.client.hget(store.keys.job(job), "state") == "failed"
    assert [s for s in JobState if s.is_final] == ["completed", "failed", "cancelled"]


def test_a_script_whose_retry_outlives_redis_script_cache_loads_it_again(
        store: Store) -> None:
    """A soak killed a chief this way: the script was missing (Redis restarted), loaded
    again, and its second call waited out a full Redis while Redis restarted once more:
    NOSCRIPT escaped redis-py's one reload. Ours loads it again each time."""
    from tunecluster.store.connection import RETRYABLE, script

    write = script(store.client, "return redis.call('SET', KEYS[1], ARGV[1])")
    other = store.client  # commands a full Redis still takes, from another thread below
    other.script_flush()  # as after a restart: the first call loads it again
    other.config_set("maxmemory", "1")  # full: the reloaded script's call is retried

    def restart_then_make_room() -> None:
        time.sleep(1.0)
        other.script_flush()  # Redis restarted while the call waited
        other.config_set("maxmemory", "0")

    helper = threading.Thread(target=restart_then_make_room)
    helper.start()
    try:
        assert write(keys=["written"], args=["yes"]) == "OK"
    finally:
        helper.join()
        other.config_set("maxmemory", "0")
    assert store.client.get("written") == "yes"
    assert issubclass(redis.exceptions.NoScriptError, RETRYABLE)
