"""Deleting a job and freeing its uploads, against a real Redis (issue 10, point 4)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tunecluster.errors import StoreError
from tunecluster.store import Store, member

SPEC = {"name": "job", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"}}


def _names(store: Store, job: str) -> list[str]:
    """Every key, member or list entry anywhere in Redis that names the job."""
    r = store.client
    found = [key for key in r.scan_iter(count=1000) if job in key]
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == "zset":
            found += [f"{key} {m}" for m in r.zrange(key, 0, -1) if job in m]
        elif kind == "list":
            found += [f"{key} {m}" for m in r.lrange(key, 0, -1) if job in m]
        elif kind == "hash" and job not in key:
            found += [f"{key} {f}" for f in r.hkeys(key) if job in f]
    return found


def _full_job(store: Store, state: str = "completed") -> str:
    """A job with every kind of key a real run leaves: files, oracle, trials, epochs..."""
    job = store.jobs.submit("job", json.dumps(SPEC), {}, 0, "native",
                            {"/d/train.csv": b"a,y\n1,2\n", "/d/test.csv": b"a,y\n3,4\n"})
    r, k = store.client, store.keys
    for i in range(3):
        store.queue.enqueue(job, f"{i:02d}", {"x": i}, 1, '{"o": 1}', '{"t": 1}')
    claim = store.queue.claim("w1", 30)
    assert claim is not None
    store.queue.report_epoch(claim, "w1", 1, {"loss": 0.5})
    store.queue.release(claim.job, claim.trial, "worker lost", worker="w1")  # :errors list
    r.hset(k.epochs(job, "01"), "1", "{}")
    r.zadd(k.leases, {member(job, "02"): 1})  # a stale lease entry
    if state != "queued":
        if state in ("completed", "failed", "cancelled"):
            store.jobs.set_state(job, "finalizing")  # a job ends through finalize
        store.jobs.set_state(job, state)
    return job


def test_set_state_final_frees_uploaded_files_and_keeps_their_names(store: Store) -> None:
    job = _full_job(store, "running")
    assert len(list(store.client.scan_iter(match=f"tc:job:{job}:file:*"))) == 2
    store.jobs.set_state(job, "finalizing")
    assert len(list(store.client.scan_iter(match=f"tc:job:{job}:file:*"))) == 2
    store.jobs.set_state(job, "completed")
    assert list(store.client.scan_iter(match=f"tc:job:{job}:file:*")) == []
    assert json.loads(store.jobs.get(job).fields["files"]) == ["/d/test.csv", "/d/train.csv"]


def test_delete_a_final_job_leaves_nothing_that_names_it(store: Store) -> None:
    other = _full_job(store, "running")
    job = _full_job(store, "completed")
    before = set(_names(store, other))
    store.client.set(f"tc:job:{job}:stray", "x")  # a key no builder knows: SCAN finds it
    assert store.jobs.delete(job) == "completed"
    assert _names(store, job) == []
    assert job not in store.jobs.all()
    assert set(_names(store, other)) == before  # the other job is untouched
    with pytest.raises(StoreError, match=f"no job '{job}'"):
        store.jobs.delete(job)


def test_delete_an_active_job_needs_force(store: Store) -> None:
    job = _full_job(store, "running")
    with pytest.raises(StoreError, match="--force"):
        store.jobs.delete(job)
    assert store.jobs.get(job).state == "running"


def test_force_cancels_waits_for_the_end_then_deletes(store: Store) -> None:
    job = _full_job(store, "running")

    def chief() -> None:  # stands in for the chief: sees the cancel, ends the job
        while store.client.hget(store.keys.job(job), "cancel") != "1":
            time.sleep(0.05)
        store.jobs.set_state(job, "finalizing")  # a job ends through finalize
        store.jobs.set_state(job, "cancelled")

    t = threading.Thread(target=chief, daemon=True)
    t.start()
    assert store.jobs.delete(job, force=True, wait_s=10) == "cancelled"
    assert _names(store, job) == []


def test_force_gives_up_with_a_clear_error_when_nothing_ends_the_job(store: Store) -> None:
    job = _full_job(store, "running")
    with pytest.raises(StoreError, match=r"still running after 0\.5s.*chief") as info:
        store.jobs.delete(job, force=True, wait_s=0.5)
    assert "\n" not in str(info.value)
    assert store.jobs.get(job).state == "running"  # nothing deleted


def test_an_interrupted_delete_is_finished_by_the_next_one(store: Store) -> None:
    job = _full_job(store, "failed")
    store.client.delete(store.keys.job(job))  # as if a delete died before its last step
    store.client.zrem(store.keys.jobs_all, job)
    assert store.jobs.delete(job) is None
    assert _names(store, job) == []


def test_unknown_and_hostile_ids_are_one_line_errors(store: Store) -> None:
    with pytest.raises(StoreError, match="no job 'nope-000000'"):
        store.jobs.delete("nope-000000")
    store.client.set("tc:job:x:file:a", "1")
    with pytest.raises(StoreError, match="not a job id"):
        store.jobs.delete("*")  # a glob must never reach SCAN
    assert store.client.exists("tc:job:x:file:a")


def test_cancel_cannot_resurrect_a_deleted_job(store: Store) -> None:
    job = _full_job(store, "completed")
    store.jobs.delete(job)
    with pytest.raises(StoreError):
        store.jobs.request_cancel(job)
    assert _names(store, job) == []


def test_list_skips_foreign_members_that_are_not_job_ids(store: Store) -> None:
    job = _full_job(store, "completed")
    store.client.zadd(store.keys.jobs_all, {"../../etc": 9e15, "a/b": 9e15})
    assert store.jobs.all() == [job]


def test_the_ray_hook_forgets_runners_of_ended_jobs(store: Store, tmp_path) -> None:
    from tunecluster.engine.scheduling import LoadedJob
    from tunecluster.ray.jobs import RayJobs

    class Done:  # a runner whose thread has ended
        alive = False

    live = _full_job(store, "running")
    ended = _full_job(store, "completed")
    hook = RayJobs(store, tmp_path, "chief-1")
    hook.runners = {ended: Done(), "gone-000000": Done()}  # type: ignore[dict-item]
    hook._started = {ended: 1.0, "gone-000000": 1.0, live: time.monotonic()}
    hook.tick([LoadedJob(live, None, {}, ())])  # type: ignore[arg-type] # started just now
    assert hook.runners == {} and set(hook._started) == {live}
