"""``/metrics`` over HTTP (uvicorn serving ``metrics_app``) against a real job run by a
real embedded cluster (Redis, chief, two workers): the exposition, parsed by
prometheus_client's parser, agrees with the job's own results document."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from tunecluster.cluster import LocalCluster
from tunecluster.dashboard.metrics import metrics_app
from tunecluster.store import Store

from .conftest import EXAMPLES, FAST_LIVENESS, run_job

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

LEASE_S = float(FAST_LIVENESS["TUNECLUSTER_LEASE_S"])
# histogram -> the field of a trial's recorded ``overhead`` (ms) that feeds it
OVERHEADS = {"tunecluster_trial_claim_to_build_seconds": "claim_to_build_ms",
             "tunecluster_trial_last_epoch_to_finished_seconds": "last_epoch_to_finished_ms"}


@pytest.fixture
def metrics_url(cluster: LocalCluster) -> Iterator[str]:
    """``metrics_app`` served by uvicorn on a free loopback port, as a deployment would."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(metrics_app(Store.from_url(cluster.url), LEASE_S),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(10)
    sock.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = httpx.get(url, timeout=30)
    assert reply.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def test_metrics_agree_with_a_real_jobs_counts(store: Store, cluster: LocalCluster,
                                               metrics_url: str) -> None:
    # Totals are cluster-wide and this cluster is shared by the session: compare deltas.
    before = scrape(metrics_url)
    results = run_job(store, EXAMPLES / "digits.yaml", "search.max_trials=3",
                      "train.epochs=1")
    after = scrape(metrics_url)

    def delta(name: str) -> float:
        return after[(name, ())] - before[(name, ())]

    assert results["state"] == "completed"
    counts = results["counts"]
    completed = counts.get("COMPLETED", 0)
    assert completed == len(results["trials"]) == 3
    assert delta("tunecluster_trials_completed_total") == completed
    assert delta("tunecluster_trials_started_total") >= completed
    assert delta("tunecluster_trials_failed_total") == counts.get("FAILED", 0)
    assert delta("tunecluster_trials_cancelled_total") == counts.get("CANCELLED", 0)
    # each finished trial's two overheads, observed once per trial
    with_overhead = [t for t in results["trials"] if t["overhead"]]
    assert len(with_overhead) == completed
    for name, field in OVERHEADS.items():
        assert delta(f"{name}_count") == completed
        assert after[(f"{name}_bucket", (("le", "+Inf"),))] == after[(f"{name}_count", ())]
        observed = sum(max(0.0, t["overhead"][field]) for t in with_overhead) / 1000
        assert delta(f"{name}_sum") == pytest.approx(observed, rel=1e-6, abs=1e-6)
    # one observation per committed chief round: Redis counts those rounds itself
    rounds = int(store.client.get(store.keys.chief_seq) or 0)
    assert delta("tunecluster_chief_round_seconds_count") > 0
    assert after[("tunecluster_chief_round_seconds_count", ())] == rounds
    # gauges: the cluster as Redis holds it now
    states = Counter(store.jobs.get(j).state for j in store.jobs.all(limit=10_000))
    for state in ("queued", "running", "finalizing", "completed", "failed", "cancelled"):
        assert after[("tunecluster_jobs", (("state", state),))] == states.get(state, 0)
    assert after[("tunecluster_jobs", (("state", "completed"),))] >= 1
    assert after[("tunecluster_ready_queue_depth", ())] == 0
    assert after[("tunecluster_trials_running", ())] == 0
    assert after[("tunecluster_workers_live", ())] == 2
    slots = store.workers.total_slots(LEASE_S)
    assert (after[("tunecluster_worker_slots", (("state", "busy"),))]
            + after[("tunecluster_worker_slots", (("state", "free"),))]) == slots
    assert after[("tunecluster_chief_active", ())] == 1
    assert after[("tunecluster_redis_up", ())] == 1
    assert after[("tunecluster_redis_rtt_seconds", ())] > 0
