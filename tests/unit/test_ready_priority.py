"""The ready queue against a real Redis: claimed highest job priority first, first in,
first out within a priority, so trials kept ready ahead for a low-priority job never
delay a higher-priority job's (chief/top_up.py READY_AHEAD)."""

from __future__ import annotations

import json

from tunecluster.store import Store
from tunecluster.store.fence import Writes

SPEC = {"name": "job", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"},
        "search": {"objective": {"name": "val_accuracy", "direction": "max"}}}


def _job(store: Store, priority: int, trials: int, first: int = 0, gang: int = 1) -> str:
    job = store.jobs.submit("job", json.dumps(SPEC), {}, priority, "native")
    _enqueue(store, job, priority, range(first, first + trials), gang)
    return job


def _enqueue(store: Store, job: str, priority: int, ids: range, gang: int = 1) -> None:
    for i in ids:
        store.queue.enqueue(job, f"{i:02d}", {"x": i}, 2, "{}", priority=priority,
                            gang_size=gang)


def _claims(store: Store, n: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        claim = store.queue.claim("w1", 10)
        assert claim is not None
        out.append((claim.job, claim.trial))
    return out


def test_a_higher_priority_jobs_trials_are_claimed_before_those_queued_earlier(
        store: Store) -> None:
    low = _job(store, priority=0, trials=3)
    lower = _job(store, priority=-5, trials=2)
    high = _job(store, priority=7, trials=2)
    assert store.queue.ready_count() == 7 and store.queue.running_count() == 0
    assert _claims(store, 7) == [(high, "00"), (high, "01"), (low, "00"), (low, "01"),
                                 (low, "02"), (lower, "00"), (lower, "01")]
    assert store.queue.claim("w1", 10) is None and store.queue.ready_count() == 0
    assert store.queue.running_count() == 7  # the seven leases


def test_the_chiefs_staged_writes_queue_by_priority_too(store: Store) -> None:
    low = _job(store, priority=0, trials=2)
    high = store.jobs.submit("job", json.dumps(SPEC), {}, 3, "native")
    writes = Writes()
    store.queue.enqueue(high, "00", {"x": 0}, 2, None, pipe=writes, priority=3)
    writes.apply(store.client)
    assert _claims(store, 3) == [(high, "00"), (low, "00"), (low, "01")]


def test_a_released_trial_goes_first_within_its_priority_only(store: Store) -> None:
    high = _job(store, priority=2, trials=2)
    low = _job(store, priority=-1, trials=2)
    first = store.queue.claim("w1", 10)
    assert first is not None and (first.job, first.trial) == (high, "00")
    store.queue.release(first.job, first.trial, "worker lost", worker="w1",
                        attempt=first.attempt)
    assert _claims(store, 4) == [(high, "00"), (high, "01"), (low, "00"), (low, "01")]


def test_a_dissolved_gang_goes_to_the_tail_of_its_priority(store: Store) -> None:
    store.workers.heartbeat("w1", {"slots": 1}, ttl_s=10)
    store.workers.heartbeat("w2", {"slots": 1}, ttl_s=10)
    high = _job(store, priority=4, trials=1, gang=2)
    _enqueue(store, high, 4, range(1, 2))
    low = _job(store, priority=0, trials=1)
    place = store.queue.claim("w1", 10, address="10.0.0.1:29500")
    assert place is not None and place.forming and place.trial == "00"
    store.queue.gang_wait(place, "w1", leave=True)  # its only member left: dissolved
    assert store.jobs.trial(high, "00")["state"] == "READY"
    assert _claims(store, 2) == [(high, "01"), (low, "00")]
    again = store.queue.claim("w1", 10, address="10.0.0.1:29500")
    assert again is not None and again.forming and (again.job, again.trial) == (high, "00")


def test_deleting_a_job_empties_its_priority_from_the_queue(store: Store) -> None:
    high = _job(store, priority=9, trials=2)
    low = _job(store, priority=0, trials=1)
    store.jobs.set_state(high, "finalizing")  # a job ends through finalize
    store.jobs.set_state(high, "cancelled")
    store.jobs.delete(high)
    assert store.queue.ready_count() == 1
    assert _claims(store, 1) == [(low, "00")]
