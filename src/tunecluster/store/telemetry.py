"""Cluster-wide telemetry kept in Redis: durable counters and fixed-bucket histograms.

Contract:
- Totals (trials started, completed, failed, cancelled, retried; leases reaped) are
  fields of one HASH, ``keys.telemetry_counts``. They are incremented inside the queue's
  Lua scripts, in the same atomic step as the transition they count and after its
  checks (the request-key replay included), so a retried claim or finish counts once
  and a refused one not at all.
- A histogram is one HASH per histogram (``keys.telemetry_hist(name)``) with fixed
  buckets: one field per upper bound (``repr(float(bound))``, plus ``+Inf``) holding the
  observations that fell in that bucket (not cumulative), and ``count`` and ``sum``.
  Bounded (a dozen fields), cheap to write (three HINCRBYs), survives restarts.
- Trial overheads are observed by the worker's finish script (from the ``overhead``
  field it records); the chief's round duration by the chief, inside its round's
  fenced commit (``observe_ops``), so a round counts once, whatever the retries.
- Totals are cluster-wide, never per job: ``delete`` of a job leaves them as they are
  and no telemetry key names a job.
Whoever serves ``/metrics`` reads them (``read``); every process reads the same values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from tunecluster.store.keys import Keys

# Fields of ``keys.telemetry_counts``.
STARTED, COMPLETED, FAILED, CANCELLED, RETRIED, REAPED = (
    "started", "completed", "failed", "cancelled", "retried", "reaped")
COUNTERS = (STARTED, COMPLETED, FAILED, CANCELLED, RETRIED, REAPED)


@dataclass(frozen=True)
class Histogram:
    """A histogram with fixed upper bounds in seconds (``+Inf`` is implied)."""

    name: str
    buckets: tuple[float, ...]
    help: str

    def field(self, seconds: float) -> str:
        """The HASH field of the bucket an observation falls in."""
        for bound in self.buckets:
            if seconds <= bound:
                return bound_name(bound)
        return "+Inf"


def bound_name(bound: float) -> str:
    return repr(float(bound))


_TRIAL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CHIEF_ROUND = Histogram(
    "chief_round_seconds",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    "Chief rounds that committed writes: from the inbox read's return to the commit"
    " (the commit's own round trip excluded: the observation travels in it).")
CLAIM_TO_BUILD = Histogram(
    "trial_claim_to_build_seconds", _TRIAL_BUCKETS,
    "Per-trial overhead from the worker's claim to the model's build (hand-off, runtime"
    " lookup, setup).")
LAST_EPOCH_TO_FINISHED = Histogram(
    "trial_last_epoch_to_finished_seconds", _TRIAL_BUCKETS,
    "Per-trial overhead from the last epoch's report to the trial recorded finished"
    " (model save included).")
HISTOGRAMS = (CHIEF_ROUND, CLAIM_TO_BUILD, LAST_EPOCH_TO_FINISHED)

# The overhead fields the worker records (milliseconds) -> the histogram they feed.
OVERHEAD_FIELDS = {"claim_to_build_ms": CLAIM_TO_BUILD,
                   "last_epoch_to_finished_ms": LAST_EPOCH_TO_FINISHED}


def lua_observe() -> str:
    """Lua defining ``observe(key, name, seconds)`` for the queue's scripts, with the
    same buckets as ``HISTOGRAMS`` (generated here so the two cannot drift)."""
    rows = []
    for h in HISTOGRAMS:
        bounds = ", ".join(f"{{{float(b)!r}, '{bound_name(b)}'}}" for b in h.buckets)
        rows.append(f"  ['{h.name}'] = {{{bounds}}},")
    table = "\n".join(rows)
    return f"""
local HISTOGRAMS = {{
{table}
}}
local function observe(key, name, seconds)
  local field = '+Inf'
  for _, b in ipairs(HISTOGRAMS[name] or {{}}) do
    if seconds <= b[1] then field = b[2]; break end
  end
  redis.call('HINCRBY', key, field, 1)
  redis.call('HINCRBY', key, 'count', 1)
  redis.call('HINCRBYFLOAT', key, 'sum', seconds)
end
"""


def observe_ops(keys: Keys, histogram: Histogram, seconds: float) -> list[list[str]]:
    """The Redis commands that record one observation, for a caller's atomic step (the
    chief's fenced ``Writes.extend``)."""
    seconds = max(0.0, float(seconds)) if math.isfinite(seconds) else 0.0
    key = keys.telemetry_hist(histogram.name)
    return [["HINCRBY", key, histogram.field(seconds), "1"],
            ["HINCRBY", key, "count", "1"],
            ["HINCRBYFLOAT", key, "sum", repr(seconds)]]


@dataclass(frozen=True)
class HistogramData:
    """A histogram as Prometheus wants it: cumulative counts per upper bound."""

    histogram: Histogram
    cumulative: list[tuple[float, int]]  # (upper bound, observations <= bound), +Inf last
    sum: float
    count: int


@dataclass(frozen=True)
class Snapshot:
    counters: dict[str, int]
    histograms: list[HistogramData]


def read(client: redis.Redis, keys: Keys) -> Snapshot:
    """Every total and histogram, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.telemetry_counts)
    for h in HISTOGRAMS:
        pipe.hgetall(keys.telemetry_hist(h.name))
    counts, *hists = pipe.execute()
    counters = {name: _int(counts.get(name)) for name in COUNTERS}
    return Snapshot(counters, [_histogram(h, raw) for h, raw in zip(HISTOGRAMS, hists,
                                                                     strict=True)])


def _histogram(h: Histogram, raw: dict[str, str]) -> HistogramData:
    running, cumulative = 0, []
    for bound in h.buckets:
        running += _int(raw.get(bound_name(bound)))
        cumulative.append((float(bound), running))
    running += _int(raw.get("+Inf"))
    cumulative.append((math.inf, running))
    try:
        total = float(raw.get("sum") or 0.0)
    except ValueError:
        total = 0.0
    # ``count`` and the buckets are written together; the buckets are what Prometheus
    # checks against, so a count that disagrees (a foreign write) does not win.
    return HistogramData(h, cumulative, total, running)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
