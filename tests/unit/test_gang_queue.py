"""Gang claims (a trial trained by N workers at once) against a real Redis: all or
nothing, bounded waits, one attempt and one lease for the gang, a lost member ends it."""

from __future__ import annotations

import json
import time

from tunecluster.store import Claim, Store
from tunecluster.store.fence import Fence
from tunecluster.store.queue import server_ms

SPEC = {"name": "job", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"},
        "search": {"objective": {"name": "val_accuracy", "direction": "max"}}}


def _job(store: Store, trials: int, gang: int, max_retries: int = 2) -> str:
    job = store.jobs.submit("job", json.dumps(SPEC), {}, 0, "native")
    for i in range(trials):
        store.queue.enqueue(job, f"{i:02d}", {"x": i}, max_retries, "{}", gang_size=gang)
    return job


def _alive(store: Store, *workers: str) -> None:
    for w in workers:
        store.workers.heartbeat(w, {"slots": 1}, ttl_s=10)


def test_a_gang_starts_only_when_its_last_member_joins_and_then_for_all(store: Store) -> None:
    job = _job(store, 1, gang=2)
    _alive(store, "w1", "w2")
    first = store.queue.claim("w1", 10, address="10.0.0.1:29500")
    assert first is not None and first.forming and first.trial == "00"
    assert store.jobs.trial(job, "00")["state"] == "FORMING"
    assert store.queue.running_count() == 0  # no lease and no attempt while forming
    assert store.queue.claim("w1", 10, address="10.0.0.1:29501") is None  # not twice
    again = store.queue.gang_wait(first, "w1")
    assert again is not None and again.forming

    second = store.queue.claim("w2", 10, address="10.0.0.2:29500")
    assert second is not None and not second.forming
    assert second.rank == 1 and second.attempt == 1
    assert [m["worker"] for m in second.gang or []] == ["w1", "w2"]
    assert [m["address"] for m in second.gang or []] == ["10.0.0.1:29500", "10.0.0.2:29500"]
    started = store.queue.gang_wait(first, "w1")
    assert started is not None and started.rank == 0 and started.attempt == 1
    record = store.jobs.trial(job, "00")
    assert record["state"] == "RUNNING" and record["worker"] == "w1"
    assert store.queue.running_count() == 1  # one lease for the whole gang
    started = [e.data for e in store.events.read(job) if e.type == "trial_started"]
    assert [e["workers"] for e in started] == [["w1", "w2"]]


def test_a_gang_that_cannot_fill_in_time_gives_its_places_back(store: Store) -> None:
    job = _job(store, 1, gang=2)
    _alive(store, "w1", "w2")
    place = store.queue.claim("w1", 10, address="h:1", gang_wait_s=0.2)
    assert place is not None and place.forming
    time.sleep(0.3)
    assert store.queue.gang_wait(place, "w1") is None  # dissolved by the first to look
    record = store.jobs.trial(job, "00")
    assert record["state"] == "READY" and record["attempts"] == "0"
    assert store.queue.ready_count() == 1
    # and it can form again
    assert store.queue.claim("w2", 10, address="h:2").forming  # type: ignore[union-attr]


def test_a_gang_needing_more_workers_than_alive_leaves_single_trials_running(
        store: Store) -> None:
    gang_job = _job(store, 1, gang=3)
    single = store.jobs.submit("single", json.dumps(SPEC), {}, 0, "native")
    store.queue.enqueue(single, "00", {"x": 1}, 0, "{}")
    _alive(store, "w1", "w2")
    got = store.queue.claim("w1", 10, address="h:1")
    assert got is not None and got.job == single and not got.forming
    assert store.queue.claim("w2", 10, address="h:2") is None
    assert store.jobs.trial(gang_job, "00")["state"] == "READY"
    assert store.queue.ready_count() == 1  # still queued, not lost
    # a worker that cannot join gangs (no address) never opens one either
    _alive(store, "w3")
    assert store.queue.claim("w3", 10) is None


def test_a_free_worker_takes_a_higher_priority_trial_before_joining_a_gang(
        store: Store) -> None:
    """Job priority holds for gangs too: a worker that frees up while a low-priority gang
    forms takes the higher-priority job's trial first; a gang of equal or higher priority
    is still joined first (its formation holds workers already)."""
    gang_job = _job(store, 1, gang=2)  # priority 0
    _alive(store, "w1", "w2", "w3")
    place = store.queue.claim("w1", 10, address="h:1")
    assert place is not None and place.forming and place.job == gang_job
    urgent = store.jobs.submit("urgent", json.dumps(SPEC), {}, 3, "native")
    store.queue.enqueue(urgent, "00", {"x": 0}, 0, "{}", priority=3)
    got = store.queue.claim("w2", 10, address="h:2")
    assert got is not None and (got.job, got.trial) == (urgent, "00") and not got.forming
    assert store.jobs.trial(gang_job, "00")["state"] == "FORMING"
    # nothing of a higher priority waits now: the next free worker completes the gang
    joined = store.queue.claim("w3", 10, address="h:3")
    assert joined is not None and joined.job == gang_job and joined.rank == 1
    assert store.jobs.trial(gang_job, "00")["state"] == "RUNNING"

    # equal priority: the forming gang goes first, as before
    later = _job(store, 1, gang=2)
    same = store.jobs.submit("same", json.dumps(SPEC), {}, 0, "native")
    _alive(store, "w4", "w5")
    place = store.queue.claim("w4", 10, address="h:4")
    assert place is not None and place.forming and place.job == later
    store.queue.enqueue(same, "00", {"x": 0}, 0, "{}")
    joined = store.queue.claim("w5", 10, address="h:5")
    assert joined is not None and joined.job == later and not joined.forming


def test_a_higher_priority_gang_keeps_its_place_ahead_of_single_trials(store: Store) -> None:
    """README: a gang job of a higher priority is not starved by another job's single
    trials: a formation that times out goes back to the tail of its priority's list, still
    ahead of every lower-priority trial, so the slot it gave back opens it again instead
    of taking a single trial."""
    singles = store.jobs.submit("singles", json.dumps(SPEC), {}, 0, "native")
    for i in range(3):
        store.queue.enqueue(singles, f"{i:02d}", {"x": i}, 0, "{}")
    gang_job = store.jobs.submit("gang", json.dumps(SPEC), {}, 5, "native")
    store.queue.enqueue(gang_job, "00", {"x": 0}, 0, "{}", gang_size=2, priority=5)
    _alive(store, "w1", "w2")
    place = store.queue.claim("w1", 10, address="h:1", gang_wait_s=0.2)
    assert place is not None and place.forming and place.job == gang_job
    time.sleep(0.3)
    assert store.queue.gang_wait(place, "w1") is None  # timed out: dissolved
    again = store.queue.claim("w1", 10, address="h:1", gang_wait_s=0.2)
    assert again is not None and again.forming and again.job == gang_job
    joined = store.queue.claim("w2", 10, address="h:2")
    assert joined is not None and joined.job == gang_job and not joined.forming
    assert all(r["state"] == "READY" for r in store.jobs.trials(singles))


def test_a_member_leaving_a_forming_gang_dissolves_it(store: Store) -> None:
    job = _job(store, 1, gang=3)
    _alive(store, "w1", "w2", "w3")
    a = store.queue.claim("w1", 10, address="h:1")
    b = store.queue.claim("w2", 10, address="h:2")
    assert a is not None and b is not None and a.forming and b.forming
    assert store.queue.gang_wait(b, "w2", leave=True) is None
    assert store.queue.gang_wait(a, "w1") is None
    assert store.jobs.trial(job, "00")["state"] == "READY"


def _silence(store: Store, job: str, worker: str, seconds: float) -> None:
    """As if ``worker`` had not beaten for ``seconds`` (Redis time)."""
    store.client.hset(store.keys.trial(job, "00"), f"beat:{worker}",
                      server_ms(store.client) - int(seconds * 1000))


def _gang_of_two(store: Store) -> tuple[str, Claim, Claim]:
    job = _job(store, 1, gang=2)
    _alive(store, "w1", "w2")
    first = store.queue.claim("w1", 10, address="h:1")
    b = store.queue.claim("w2", 10, address="h:2")
    assert first is not None and b is not None and not b.forming
    a = store.queue.gang_wait(first, "w1")
    assert a is not None and not a.forming
    return job, a, b


def test_a_silent_member_fails_the_attempt_for_every_member(store: Store) -> None:
    job, a, b = _gang_of_two(store)
    assert store.queue.gang_check(a, "w1", 5) == ("OK", "")
    assert store.queue.gang_check(b, "w2", 5) == ("OK", "")
    _silence(store, job, "w1", 4)
    assert store.queue.gang_check(b, "w2", 5) == ("OK", "")  # 4 s < 5 s
    _silence(store, job, "w1", 6)
    state, why = store.queue.gang_check(b, "w2", 5)
    assert state == "RELEASED" and "gang member w1 lost: silent for 6" in why
    record = store.jobs.trial(job, "00")
    assert record["state"] == "READY" and record["attempts"] == "1"
    assert not any(k.startswith(("member:", "beat:")) for k in record)
    assert store.queue.gang_check(a, "w1", 5) == ("GONE", "")
    # the next formation is a new attempt, and resumes (an earlier one was released)
    store.queue.claim("w2", 10, address="h:2")
    again = store.queue.claim("w1", 10, address="h:1")
    assert again is not None and again.attempt == 2 and again.resume and again.rank == 1


def test_a_member_silent_itself_judges_no_one_after_an_outage(store: Store) -> None:
    job, a, b = _gang_of_two(store)
    _silence(store, job, "w1", 30)  # nobody could beat (as if Redis had been down)
    _silence(store, job, "w2", 30)
    assert store.queue.gang_check(b, "w2", 5) == ("OK", "")
    assert store.queue.gang_check(a, "w1", 5) == ("OK", "")
    assert store.jobs.trial(job, "00")["state"] == "RUNNING"


def test_renewing_a_member_counts_as_its_beat(store: Store) -> None:
    job, a, b = _gang_of_two(store)
    _silence(store, job, "w1", 60)
    assert store.queue.renew("w1", [a.member], 10) == 1  # the worker's heartbeat
    assert store.queue.gang_check(b, "w2", 5) == ("OK", "")


def test_only_rank_zero_reports_and_finishes_but_any_member_renews_and_releases(
        store: Store) -> None:
    job = _job(store, 1, gang=2)
    _alive(store, "w1", "w2")
    store.queue.claim("w1", 10, address="h:1")
    b = store.queue.claim("w2", 10, address="h:2")
    assert b is not None
    assert store.queue.renew("w2", [b.member], 10) == 1
    assert not store.queue.finish(b, "w2", "COMPLETED", {"score": "1.0"})
    assert store.queue.release(job, "00", "trial process crashed", worker="w2",
                               attempt=b.attempt) == 1
    assert store.jobs.trial(job, "00")["state"] == "READY"


def test_a_cancelled_job_takes_its_forming_gang_away(store: Store) -> None:
    job = _job(store, 1, gang=2)
    _alive(store, "w1", "w2")
    a = store.queue.claim("w1", 10, address="h:1")
    assert a is not None and a.forming
    assert store.queue.cancel_ready(job, "00", "job ended", Fence.NONE)
    assert store.jobs.trial(job, "00")["state"] == "CANCELLED"
    assert store.queue.gang_wait(a, "w1") is None
    assert store.queue.claim("w2", 10, address="h:2") is None


def test_the_reaper_dissolves_a_formation_whose_members_are_all_gone(store: Store) -> None:
    job = _job(store, 1, gang=2)
    _alive(store, "w1", "w2")
    place = store.queue.claim("w1", 10, address="h:1", gang_wait_s=0.1)
    assert place is not None and place.forming
    time.sleep(0.2)  # w1 died while waiting: nobody calls gang_wait or claim again
    store.queue.reap(Fence.NONE, stall_ms=60_000, grace_ms=0)
    record = store.jobs.trial(job, "00")
    assert record["state"] == "READY" and "member:w1" not in record
    assert store.client.zcard(store.keys.forming) == 0
    assert store.queue.ready_count() == 1


def test_a_member_that_died_while_forming_loses_its_place(store: Store) -> None:
    job = _job(store, 1, gang=2)
    _alive(store, "w1", "w2", "w3")
    place = store.queue.claim("w1", 10, address="h:1")
    assert place is not None and place.forming
    store.client.zadd(store.keys.workers, {"w1": server_ms(store.client) - 60_000})  # silent
    joined = store.queue.claim("w2", 10, address="h:2")
    assert joined is not None and joined.forming  # w1's place went: w2 is rank 0 now
    assert store.queue.gang_wait(place, "w1") is None
    third = store.queue.claim("w3", 10, address="h:3")
    assert third is not None and not third.forming and third.rank == 1
    assert [m["worker"] for m in third.gang or []] == ["w2", "w3"]
    assert store.jobs.trial(job, "00")["attempts"] == "1"
