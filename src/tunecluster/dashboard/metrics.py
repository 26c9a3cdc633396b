"""Prometheus ``/metrics`` for the whole cluster, read from Redis on each scrape.

Served by the dashboard process (``metrics_app``), not by each role: every number is
either state Redis holds (jobs, queue, workers, slots) or a total the roles record in
Redis as they act (``store/telemetry.py``), so any process reading Redis exports the
same cluster-wide view, one scrape target is enough, and a restarted dashboard loses
nothing. Imports no TensorFlow. See docs/metrics.md for every metric.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest, make_asgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from tunecluster import defaults
from tunecluster.store import Store, telemetry
from tunecluster.store.jobs import ACTIVE_STATES, DELETING, FINAL_STATES

PREFIX = "tunecluster"
JOB_STATES = (*ACTIVE_STATES, *FINAL_STATES)

# counter name (``_total`` is added by the exposition) -> telemetry field, help
COUNTERS = {
    "trials_started": (telemetry.STARTED, "Trials claimed by a worker (each attempt)."),
    "trials_completed": (telemetry.COMPLETED, "Trials that completed."),
    "trials_failed": (telemetry.FAILED,
                      "Trials that failed (an error, or retries spent after lost leases)."),
    "trials_cancelled": (telemetry.CANCELLED, "Trials cancelled (their job ended)."),
    "trials_retried": (telemetry.RETRIED,
                       "Running trials put back in the ready queue to run again (lost lease,"
                       " crashed trial process, worker shutdown)."),
    "leases_reaped": (telemetry.REAPED, "Expired leases the chief's reaper released."),
}


# Metrics collected for the request being served (see ``metrics_app``).
_COLLECTED: ContextVar[list[Metric] | None] = ContextVar("tunecluster_metrics", default=None)


class ClusterCollector:
    """A prometheus_client collector: reads the cluster's state from Redis per scrape.

    When Redis cannot be reached the scrape still answers, with ``tunecluster_redis_up``
    0 and nothing else, so an alert can tell an outage from a quiet cluster.
    """

    def __init__(self, store: Store, lease_s: float = defaults.LEASE_S) -> None:
        self.store = store
        self.lease_s = lease_s

    def collect(self) -> Iterator[Metric]:
        collected = _COLLECTED.get()
        if collected is not None:  # read from Redis off the event loop for this request
            yield from collected
            return
        yield from self.read()

    def read(self) -> Iterator[Metric]:
        """Every metric, read from Redis now (blocking: a few round trips)."""
        try:
            # Measured before anything else is asked, so it is one bare round trip.
            started = time.perf_counter()
            self.store.ping()
            rtt = time.perf_counter() - started
            metrics = list(self._cluster())
        except redis.RedisError:
            yield _gauge("redis_up", "Whether Redis answered this scrape.", 0)
            return
        yield _gauge("redis_up", "Whether Redis answered this scrape.", 1)
        yield _gauge("redis_rtt_seconds",
                     "Round-trip time of one PING to Redis, measured by this scrape.", rtt)
        yield from metrics

    def _cluster(self) -> Iterator[Metric]:
        snap = self.store.telemetry()
        ready = self.store.queue.ready_count()
        running, chief, jobs = self.store.census()
        yield from self._jobs(jobs)
        yield _gauge("ready_queue_depth", "Trials waiting in the ready queue.", ready)
        yield _gauge("trials_running", "Trials holding a lease (running now).", running)
        yield _gauge("chief_active", "Whether a chief holds the chief lock.", int(chief > 0))
        yield from self._workers()
        for name, (field, help_text) in COUNTERS.items():
            counter = CounterMetricFamily(f"{PREFIX}_{name}", help_text)
            counter.add_metric([], snap.counters[field])
            yield counter
        for data in snap.histograms:
            hist = HistogramMetricFamily(f"{PREFIX}_{data.histogram.name}",
                                         data.histogram.help)
            hist.add_metric([], [(floatToGoString(bound), count)
                                 for bound, count in data.cumulative], data.sum)
            yield hist

    def _jobs(self, jobs: list[str]) -> Iterator[Metric]:
        counts = dict.fromkeys(JOB_STATES, 0)
        for state in self.store.jobs.states(jobs):
            if state and state != DELETING:
                counts[state] = counts.get(state, 0) + 1
        family = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs by state.", labels=["state"])
        for state, n in counts.items():
            family.add_metric([state], n)
        yield family

    def _workers(self) -> Iterator[Metric]:
        live = self.store.workers.live(self.lease_s)
        slots = busy = 0
        for info in live.values():
            slots += max(0, _int(info.get("slots"), 1))
            busy += max(0, _int(info.get("busy"), 0))
        yield _gauge("workers_live",
                     "Workers whose heartbeat is younger than a lease.", len(live))
        family = GaugeMetricFamily(f"{PREFIX}_worker_slots",
                                   "Trial slots of the live workers, busy or free.",
                                   labels=["state"])
        family.add_metric(["busy"], min(busy, slots))
        family.add_metric(["free"], max(0, slots - busy))
        yield family


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", help_text, value=value)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def registry(store: Store, lease_s: float = defaults.LEASE_S,
             collector: ClusterCollector | None = None) -> CollectorRegistry:
    """A registry holding only the cluster collector (no process metrics of whichever
    process happens to serve it: they would differ by replica)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector or ClusterCollector(store, lease_s))  # type: ignore[arg-type]
    return reg


def render_metrics(store: Store, lease_s: float = defaults.LEASE_S) -> bytes:
    """The text exposition of every metric, as ``/metrics`` serves it."""
    return generate_latest(registry(store, lease_s))


def metrics_app(store: Store, lease_s: float = defaults.LEASE_S) -> Any:
    """An ASGI app serving the metrics (mount it at ``/metrics``, or serve it alone)."""
    collector = ClusterCollector(store, lease_s)
    inner = make_asgi_app(registry=registry(store, lease_s, collector))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # prometheus_client's app accepts only HTTP; served alone (uvicorn, a test
        # client) it would fail the server's lifespan start-up, so answer that here.
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        # prometheus_client collects on the event loop; the Redis reads run in a thread
        # instead, so a slow or unreachable Redis does not stall the dashboard's pages.
        from anyio import to_thread

        token = _COLLECTED.set(await to_thread.run_sync(lambda: list(collector.read())))
        try:
            await inner(scope, receive, send)
        finally:
            _COLLECTED.reset(token)

    return app
