"""The exactly-once invariant that every fault scenario asserts (docs/reliability.md):
the job ends; each trial it created was created once and is final (COMPLETED, FAILED
with its reason, or CANCELLED), with one completion event in the job's event stream;
none is left READY, RUNNING or holding a lease; its attempts are the runs that were
started (one number per start, a released run's number given out again) and within
its retry budget."""

from __future__ import annotations

from collections import Counter, defaultdict

from tunecluster.store import Store
from tunecluster.store.records import FINAL_STATES

FINAL_TRIAL_STATES = ("COMPLETED", "FAILED", "CANCELLED")
# The event a trial's final state is announced with, and the other events that end one.
COMPLETION_EVENTS = {f"trial_{state.lower()}": state for state in FINAL_TRIAL_STATES}


def assert_exactly_once(store: Store, job: str, trials: int | None = None) -> list[dict]:
    """Assert the invariant for ``job`` from what Redis holds (its record, its trials,
    its event stream, the leases); ``trials``: how many it must have created. Returns
    the trial records."""
    state = store.jobs.get(job).state
    assert state in FINAL_STATES, f"job {job} did not end: {state}"
    ids = store.jobs.trial_ids(job)
    assert len(ids) == len(set(ids)), f"a trial is listed twice: {ids}"
    if trials is not None:
        assert len(ids) == trials, f"{len(ids)} trials, expected {trials}: {ids}"
    events = store.events.read(job, count=1_000_000)
    created = Counter(e.data.get("trial") for e in events if e.type == "trial_created")
    assert created == Counter(ids), f"trials created (events) {created} != listed {ids}"
    ended: dict[str, list[str]] = defaultdict(list)
    started: dict[str, set[int]] = defaultdict(set)
    for e in events:
        if e.type in COMPLETION_EVENTS:
            ended[str(e.data.get("trial"))].append(COMPLETION_EVENTS[e.type])
        elif e.type == "trial_started":
            started[str(e.data.get("trial"))].add(int(e.data["attempt"]))
    rows = []
    for tid in ids:
        row = store.jobs.trial(job, tid)
        rows.append(row)
        final = row.get("state")
        assert final in FINAL_TRIAL_STATES, f"trial {tid} left {final}: {row}"
        if final == "FAILED":
            assert row.get("error"), f"trial {tid} FAILED without a reason: {row}"
        assert ended[tid] == [final], (
            f"trial {tid} is {final}; its completion events: {ended[tid]} (exactly one"
            f" trial_{final.lower()} expected)")
        member = f"{job}/{tid}"
        assert store.client.zscore(store.keys.leases, member) is None, \
            f"trial {tid} is {final} but still holds a lease"
        attempts = int(row.get("attempts") or 0)
        budget = int(row.get("max_retries") or 0) + 1
        assert 0 <= attempts <= budget, f"trial {tid}: {attempts} attempts, budget {budget}"
        assert started[tid] == set(range(1, attempts + 1)), (
            f"trial {tid} counts {attempts} attempts; runs started: {sorted(started[tid])}")
        if final == "COMPLETED":
            assert attempts >= 1, f"trial {tid} COMPLETED without a run: {row}"
    return rows
