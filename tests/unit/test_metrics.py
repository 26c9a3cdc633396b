"""``/metrics``: the cluster collector against a real Redis, fed by the real queue scripts
(claims, finishes, releases, the reaper, cancels) and the chief's fenced round commit."""

from __future__ import annotations

import json
import math
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tunecluster.cluster import RedisServer
from tunecluster.dashboard.metrics import metrics_app, render_metrics
from tunecluster.store import Keys, Store, connect, telemetry
from tunecluster.store.fence import Fence, LostLeadership, Writes

SPEC = {"name": "job", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"},
        "search": {"objective": {"name": "val_accuracy", "direction": "max"}}}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(store: Store) -> Samples:
    """Every sample of the exposition, parsed by prometheus_client's own parser."""
    text = render_metrics(store).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _job(store: Store, trials: int, max_retries: int = 1) -> str:
    job = store.jobs.submit("job", json.dumps(SPEC), {}, 0, "native")
    for i in range(trials):
        store.queue.enqueue(job, f"{i:02d}", {"x": i}, max_retries, "{}")
    return job


def test_an_empty_cluster_exports_every_metric_at_zero(store: Store) -> None:
    s = scrape(store)
    assert value(s, "tunecluster_redis_up") == 1
    assert 0 <= value(s, "tunecluster_redis_rtt_seconds") < 60
    for state in ("queued", "running", "finalizing", "completed", "failed", "cancelled"):
        assert value(s, "tunecluster_jobs", state=state) == 0
    for name in ("started", "completed", "failed", "cancelled", "retried"):
        assert value(s, f"tunecluster_trials_{name}_total") == 0
    assert value(s, "tunecluster_leases_reaped_total") == 0
    assert value(s, "tunecluster_ready_queue_depth") == 0
    assert value(s, "tunecluster_workers_live") == 0
    assert value(s, "tunecluster_worker_slots", state="busy") == 0
    for h in telemetry.HISTOGRAMS:
        assert value(s, f"tunecluster_{h.name}_count") == 0
        assert value(s, f"tunecluster_{h.name}_bucket", le="+Inf") == 0


def test_trial_transitions_are_counted_once_each(store: Store) -> None:
    job = _job(store, 4, max_retries=1)
    assert value(scrape(store), "tunecluster_ready_queue_depth") == 4
    a, b, c = (store.queue.claim(f"w{i}", 30) for i in range(3))
    assert a and b and c
    overhead = {"claim_to_build_ms": 20.0, "last_epoch_to_finished_ms": 300.0}
    assert store.queue.finish(a, "w0", "COMPLETED", {"score": "0.9", "overhead": overhead})
    assert store.queue.finish(b, "w1", "FAILED", {"error": "boom"})
    assert store.queue.release(job, c.trial, "crashed", worker="w2") == 1  # back to READY
    s = scrape(store)
    assert value(s, "tunecluster_trials_started_total") == 3
    assert value(s, "tunecluster_trials_completed_total") == 1
    assert value(s, "tunecluster_trials_failed_total") == 1
    assert value(s, "tunecluster_trials_retried_total") == 1
    assert value(s, "tunecluster_trials_running") == 0
    assert value(s, "tunecluster_ready_queue_depth") == 2
    # the overheads (ms) land in their buckets, as seconds
    build = "tunecluster_trial_claim_to_build_seconds"
    assert value(s, f"{build}_count") == 1
    assert value(s, f"{build}_sum") == pytest.approx(0.02)
    assert value(s, f"{build}_bucket", le="0.01") == 0
    assert value(s, f"{build}_bucket", le="0.025") == 1
    done = "tunecluster_trial_last_epoch_to_finished_seconds"
    assert value(s, f"{done}_bucket", le="0.25") == 0
    assert value(s, f"{done}_bucket", le="0.5") == 1
    assert value(s, f"{done}_bucket", le="+Inf") == 1
    # a stale attempt's finish is refused and counts nothing
    assert not store.queue.finish(c, "w2", "COMPLETED", {"score": "0.1"})
    assert value(scrape(store), "tunecluster_trials_completed_total") == 1


def test_a_retried_finish_or_claim_is_counted_once(store: Store) -> None:
    _job(store, 2)
    request = store.keys.request("retried-claim")
    queue = store.queue
    first = queue.claim("w1", 30, request_key=request)
    again = queue.claim("w1", 30, request_key=request)  # a re-send
    assert first is not None and again is not None
    assert (first.job, first.trial, first.attempt) == (again.job, again.trial, again.attempt)
    assert value(scrape(store), "tunecluster_trials_started_total") == 1
    assert store.queue.ready_count() == 1  # the re-send popped nothing
    claim = queue.claim("w2", 30)
    assert claim is not None
    fields = {"score": "0.5", "overhead": {"claim_to_build_ms": 5, "last_epoch_to_finished_ms": 5}}
    key = store.keys.request("retried-finish")
    assert queue.finish(claim, "w2", "COMPLETED", fields, request_key=key)
    assert queue.finish(claim, "w2", "COMPLETED", fields, request_key=key)  # the retry
    s = scrape(store)
    assert value(s, "tunecluster_trials_completed_total") == 1
    assert value(s, "tunecluster_trial_claim_to_build_seconds_count") == 1
    assert value(s, "tunecluster_trial_last_epoch_to_finished_seconds_count") == 1


def test_unreadable_overhead_is_not_observed_and_does_not_refuse_the_finish(
        store: Store) -> None:
    _job(store, 2)
    a, b = store.queue.claim("w", 30), store.queue.claim("w", 30)
    assert a and b
    assert store.queue.finish(a, "w", "COMPLETED", {"overhead": "not json"})
    assert store.queue.finish(b, "w", "COMPLETED", {"overhead": {"claim_to_build_ms": "x"}})
    s = scrape(store)
    assert value(s, "tunecluster_trials_completed_total") == 2
    assert value(s, "tunecluster_trial_claim_to_build_seconds_count") == 0


def test_reaped_leases_and_cancelled_trials(store: Store) -> None:
    job = _job(store, 3, max_retries=0)
    store.client.set(store.keys.chief_lock, "me")
    fence = Fence(store.keys.chief_lock, "me")
    store.queue.reap(fence, 60_000, 0)  # the reaper's first pass sets its clock
    claim = store.queue.claim("w", 0.001)
    assert claim is not None
    time.sleep(0.05)
    assert store.queue.reap(fence, 60_000, 0).failed == 1  # no retries left: FAILED
    assert store.queue.cancel_ready(job, "01", "job ended", fence)
    assert not store.queue.cancel_ready(job, "01", "job ended", fence)  # already
    s = scrape(store)
    assert value(s, "tunecluster_leases_reaped_total") == 1
    assert value(s, "tunecluster_trials_failed_total") == 1
    assert value(s, "tunecluster_trials_retried_total") == 0
    assert value(s, "tunecluster_trials_cancelled_total") == 1
    assert value(s, "tunecluster_chief_active") == 1


def test_chief_rounds_are_observed_in_the_fenced_commit(store: Store) -> None:
    store.client.set(store.keys.chief_lock, "me")
    for seconds in (0.002, 0.3, 99.0):
        Writes().extend(telemetry.observe_ops(store.keys, telemetry.CHIEF_ROUND, seconds)).apply(
            store.client, Fence(store.keys.chief_lock, "me"))
    with pytest.raises(LostLeadership):  # a deposed chief's round is not counted
        Writes().extend(telemetry.observe_ops(store.keys, telemetry.CHIEF_ROUND, 1.0)).apply(
            store.client, Fence(store.keys.chief_lock, "other"))
    s = scrape(store)
    name = "tunecluster_chief_round_seconds"
    assert value(s, f"{name}_count") == 3
    assert value(s, f"{name}_sum") == pytest.approx(99.302)
    assert value(s, f"{name}_bucket", le="0.001") == 0
    assert value(s, f"{name}_bucket", le="0.0025") == 1
    assert value(s, f"{name}_bucket", le="0.5") == 2
    assert value(s, f"{name}_bucket", le="10.0") == 2
    assert value(s, f"{name}_bucket", le="+Inf") == 3


def test_jobs_by_state_workers_and_slots(store: Store) -> None:
    jobs = [_job(store, 0) for _ in range(4)]
    store.jobs.set_state(jobs[0], "running")
    store.jobs.set_state(jobs[1], "finalizing")  # a job ends through finalize
    store.jobs.set_state(jobs[1], "completed")
    store.jobs.set_state(jobs[2], "finalizing")  # a job ends through finalize
    store.jobs.set_state(jobs[2], "completed")
    store.workers.heartbeat("w1", {"slots": 2, "busy": 1}, 10)
    store.workers.heartbeat("w2", {"slots": 3, "busy": 3}, 10)
    s = scrape(store)
    assert value(s, "tunecluster_jobs", state="queued") == 1
    assert value(s, "tunecluster_jobs", state="running") == 1
    assert value(s, "tunecluster_jobs", state="completed") == 2
    assert value(s, "tunecluster_workers_live") == 2
    assert value(s, "tunecluster_worker_slots", state="busy") == 4
    assert value(s, "tunecluster_worker_slots", state="free") == 1
    assert value(s, "tunecluster_chief_active") == 0
    store.jobs.delete(jobs[1])  # totals are cluster-wide; the gauge follows the jobs
    assert value(scrape(store), "tunecluster_jobs", state="completed") == 1


def test_totals_survive_a_new_reader_and_name_no_job(store: Store, server: RedisServer) -> None:
    job = _job(store, 1)
    claim = store.queue.claim("w", 30)
    assert claim and store.queue.finish(claim, "w", "COMPLETED", {"score": "1"})
    fresh = Store.from_url(server.url)  # another process (a restarted dashboard)
    assert value(scrape(fresh), "tunecluster_trials_completed_total") == 1
    assert not [k for k in store.client.scan_iter(match="tc:telemetry*") if job in k]


def test_redis_down_is_a_scrape_with_redis_up_zero() -> None:
    with RedisServer() as gone:
        url = gone.url
    store = Store(connect(url, check=False, retries=0))
    s = scrape(store)
    assert value(s, "tunecluster_redis_up") == 0
    assert ("tunecluster_trials_started_total", ()) not in s


def test_metrics_app_serves_the_exposition(store: Store) -> None:
    import asyncio

    import httpx

    _job(store, 2)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=metrics_app(store))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.get("/")

    reply = asyncio.run(get())
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    assert families["tunecluster_ready_queue_depth"].samples[0].value == 2
    assert families["tunecluster_trials_started"].type == "counter"
    assert families["tunecluster_chief_round_seconds"].type == "histogram"
    assert not any(name.startswith(("process_", "python_")) for name in families)


def test_histogram_fields_are_what_the_lua_writes() -> None:
    h = telemetry.CHIEF_ROUND
    assert h.field(0.0) == "0.001" and h.field(10.0) == "10.0" and h.field(11) == "+Inf"
    assert telemetry.observe_ops(Keys("tc"), h, math.nan)[0][2] == "0.001"
