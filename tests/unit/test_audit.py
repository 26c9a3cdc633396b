"""The exactly-once audit (store/audit.py) that every fault test and the soak rely on:
it passes a job that ran cleanly and names each way a job can break the invariant."""

from __future__ import annotations

import json

from tunecluster.states import JobState
from tunecluster.store import Store
from tunecluster.store.audit import exactly_once

SPEC = {"name": "job", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"}}


def _ended_job(store: Store, trials: int = 2) -> str:
    """A job whose ``trials`` trials each ran once and completed, and which ended."""
    job = store.jobs.submit("job", json.dumps(SPEC), {}, 0, "native")
    for i in range(trials):
        store.queue.enqueue(job, f"{i:02d}", {"x": i}, 1, "{}")
    for _ in range(trials):
        claim = store.queue.claim("w1", 30)
        assert claim is not None
        assert store.queue.finish(claim, "w1", "COMPLETED", {"score": "0.5"})
    store.jobs.set_state(job, JobState.FINALIZING)
    store.jobs.set_state(job, JobState.COMPLETED)
    return job


def _event(store: Store, job: str, kind: str, **data: object) -> None:
    store.client.xadd(store.keys.events(job), {"type": kind, "data": json.dumps(data)})


def test_a_clean_job_holds_the_invariant(store: Store) -> None:
    job = _ended_job(store)
    problems, rows = exactly_once(store, job, trials=2)
    assert problems == []
    assert [row["state"] for row in rows] == ["COMPLETED", "COMPLETED"]


def test_each_breach_is_named(store: Store) -> None:
    job = _ended_job(store, trials=3)
    trial = store.keys.trial
    _event(store, job, "trial_completed", trial="00")  # a second completion
    store.client.hset(trial(job, "01"), "attempts", "3")  # more than its budget of 2
    store.client.hset(trial(job, "02"), "state", "FAILED")  # no reason, events disagree
    store.client.zadd(store.keys.leases, {f"{job}/02": 1})

    problems, _ = exactly_once(store, job, trials=4)

    text = "\n".join(problems)
    assert "3 trials, expected 4" in text
    assert "trial 00 is COMPLETED; its completion events: ['COMPLETED', 'COMPLETED']" in text
    assert "trial 01: 3 attempts, budget 2" in text
    assert "trial 01 counts 3 attempts; runs started: [1]" in text
    assert "trial 02 FAILED without a reason" in text
    assert "trial 02 is FAILED but still holds a lease" in text


def test_an_open_job_and_an_open_trial_are_named(store: Store) -> None:
    job = store.jobs.submit("job", json.dumps(SPEC), {}, 0, "native")
    store.queue.enqueue(job, "00", {"x": 0}, 1, "{}")
    _event(store, job, "trial_created", trial="07")  # created, but never listed

    problems, _ = exactly_once(store, job)

    assert problems[0] == f"job {job} did not end: queued"
    assert any(p.startswith("trials created (events)") for p in problems)
    assert any(p.startswith("trial 00 left READY") for p in problems)
