"""Exactly once under the control plane's own failures: Redis killed, restored from an
older copy, a reply lost on the wire; chiefs frozen, replaced and restarted at chosen
moments; workers with skewed clocks; no worker alive when a search ends.

Real Redis servers and real chief and worker processes throughout. Where a test needs
a trial to start or end at an exact moment, the test itself plays the worker through
the store API (``ScriptedWorker``: the same claim, renew, report and finish calls a
worker makes), so that the moment is chosen, not raced for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster, RedisServer
from tunecluster.store import Claim, Store

from .conftest import EXAMPLES, FAST_LIVENESS
from .invariants import assert_exactly_once

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

LEASE_S = float(FAST_LIVENESS["TUNECLUSTER_LEASE_S"])
LOCK_S = float(FAST_LIVENESS["TUNECLUSTER_CHIEF_LOCK_S"])
# Long enough per epoch to be caught mid-trial, small enough for 2 cores.
SLOW = ("train.batch_size=8", "train.steps_per_execution=1", "train.early_stopping=null")


def _until(predicate: Callable[[], object], timeout: float = 90, every: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def _events(store: Store, job: str, kind: str) -> list[dict]:
    return [e.data for e in store.events.read(job, count=100_000) if e.type == kind]


class ScriptedWorker:
    """A worker whose every step the test decides; it heartbeats and renews its leases
    in the background like a real one."""

    def __init__(self, store: Store, slots: int, worker_id: str = "scripted") -> None:
        self.store, self.id, self.slots = store, worker_id, slots
        self.claims: list[Claim] = []
        self.alive = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._beat_once()
        self._thread.start()

    def _beat_once(self) -> None:
        if self.alive:
            self.store.workers.heartbeat(self.id, {"slots": self.slots, "host": "test"},
                                         ttl_s=LEASE_S)
        self.store.queue.renew(self.id, [c.member for c in self.claims], LEASE_S)

    def _beat(self) -> None:
        while not self._stop.wait(0.3):
            self._beat_once()

    def claim(self, timeout: float = 60) -> Claim:
        claim = _until(lambda: self.store.queue.claim(self.id, LEASE_S), timeout)
        assert isinstance(claim, Claim)
        self.claims.append(claim)
        return claim

    def end(self, claim: Claim, state: str = "COMPLETED", score: float = 0.5) -> None:
        self.store.queue.report_epoch(claim, self.id, 1, {"val_accuracy": score, "loss": 1.0})
        fields = {"score": repr(score), "metrics": {"val_accuracy": score}} \
            if state == "COMPLETED" else {"error": "scripted failure"}
        assert self.store.queue.finish(claim, self.id, state, fields)
        self.claims.remove(claim)

    def leave(self) -> None:
        """Stop heartbeating as a worker (the leases of its claims are still renewed)."""
        self.alive = False
        self.store.workers.remove(self.id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    made: list[LocalCluster] = []
    scripted: list[ScriptedWorker] = []

    def make(workers: int = 0, appendonly: bool = False, env: dict | None = None) -> LocalCluster:
        c = LocalCluster(workers=workers, artifacts=tmp_path / "artifacts",
                         log_dir=tmp_path / "logs", appendonly=appendonly,
                         env={**FAST_LIVENESS, **(env or {})}).start()
        made.append(c)
        return c

    make.scripted = scripted  # type: ignore[attr-defined]
    yield make
    for w in scripted:
        w.stop()
    for c in made:
        c.stop()


def _scripted(make: Callable[..., LocalCluster], store: Store, slots: int) -> ScriptedWorker:
    w = ScriptedWorker(store, slots)
    make.scripted.append(w)  # type: ignore[attr-defined]
    return w


def _cancel_and_end(store: Store, worker: ScriptedWorker, *jobs: str) -> None:
    """Cancel ``jobs``, let ``worker`` end what it runs, and wait for them to end."""
    for job in jobs:
        store.jobs.request_cancel(job)
    for claim in list(worker.claims):
        worker.end(claim)
    for job in jobs:
        assert wait(store, job, 60)["state"] == "cancelled"


def _restart_redis(cluster: LocalCluster, after_s: float, appendonly: bool = True) -> None:
    """SIGKILL Redis, wait, start it again on the same port and data directory."""
    old = cluster.redis
    assert old is not None
    old.stop(kill=True)
    time.sleep(after_s)
    cluster.redis = RedisServer(port=old.port, data_dir=old.data_dir,
                                appendonly=appendonly).start()


# --- point 1: a Redis outage longer than a lease ------------------------------------------


def test_redis_outage_longer_than_a_lease_spends_no_retry(control_plane) -> None:
    """Redis (AOF) SIGKILLed while two trials run and back 2.5 leases later: both workers
    were alive all along, so neither trial may be reaped, even with no retries allowed.
    (8 epochs: the outage starts once both trials reported their first, and the second
    worker's trial may start seconds after the first under load: 4 were over before it
    reached its first epoch twice on a loaded machine; the trials report the rest after.)"""
    cluster = control_plane(workers=2, appendonly=True)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.max_trials=2", "train.epochs=8", "search.max_retries_per_trial=0", *SLOW)))
    _until(lambda: sum(int(r.get("last_epoch") or 0) >= 1 and r.get("state") == "RUNNING"
                       for r in store.jobs.trials(job)) == 2)
    time.sleep(0.5)  # one fsync of the AOF: the claims are on disk
    _restart_redis(cluster, after_s=2.5 * LEASE_S)
    results = wait(store, job, 240)
    assert results["state"] == "completed", results.get("error")
    assert [(t["state"], t["attempts"]) for t in results["trials"]] == [("COMPLETED", 1)] * 2
    assert_exactly_once(store, job, 2)


def test_a_full_redis_pauses_the_cluster_and_spends_no_retry(control_plane) -> None:
    """Redis reaches maxmemory (noeviction: every write refused, a script before it runs)
    while two trials train, for two leases (past a lease, the reap interval and a tick,
    when a chief that trusted the stale leases would reap them): the chief, the workers
    and the trial processes wait for room instead of dying or failing trials, and the job
    completes with every trial in its first attempt once room is made. (4 epochs: full
    after the first, the trials report the rest after it.)"""
    cluster = control_plane(workers=2)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.max_trials=3", "train.epochs=4", "search.max_retries_per_trial=0", *SLOW)))
    _until(lambda: sum(int(r.get("last_epoch") or 0) >= 1 and r.get("state") == "RUNNING"
                       for r in store.jobs.trials(job)) == 2)
    used = int(store.client.info("memory")["used_memory"])
    store.client.config_set("maxmemory", str(used - 100_000))
    try:
        time.sleep(2 * LEASE_S)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            Store(redis.Redis.from_url(cluster.url)).client.set("probe", "1")  # still full
    finally:
        store.client.config_set("maxmemory", "0")
    results = wait(store, job, 240)
    assert results["state"] == "completed", results.get("error")
    assert [(t["state"], t["attempts"]) for t in results["trials"]] == [("COMPLETED", 1)] * 3
    assert_exactly_once(store, job, 3)


# --- point 5: a restarted chief never reuses a tuner id -----------------------------------


def test_a_restarted_chief_never_hands_out_a_running_trial_again(control_plane) -> None:
    """Grid search answers IDLE while it waits for results; those answers used up tuner
    ids that a restarted chief counted again from the trial count, until one matched a
    running trial's id and KerasTuner handed that trial out a second time."""
    cluster = control_plane(workers=0)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.algorithm=grid", "search.max_trials=6",
        'model.hyperparameters={"n_hidden": {"int": [1, 3]}, "n_neurons": {"choice": [16, 32]}}',
    )))
    worker = _scripted(control_plane, store, slots=3)
    first, second = worker.claim(), worker.claim()
    started = time.monotonic()
    time.sleep(3)  # the free third slot: the chief asks, grid answers IDLE, again and again
    worker.end(first)
    worker.end(second)
    worker.claim()  # made after many IDLE answers: its tuner id is far past the trial count
    asked_for = time.monotonic() - started
    old_id = store.client.get(store.keys.chief_lock)
    os.killpg(cluster.chiefs[0].pid, signal.SIGKILL)
    cluster.start_chief()
    _until(lambda: store.client.get(store.keys.chief_lock) not in (None, old_id), 60)
    time.sleep(asked_for + 2)  # as long as the first chief asked: its ids come round again
    for running in worker.claims:
        row = store.jobs.trial(job, running.trial)
        assert (row["state"], row["attempts"], row["worker"]) == ("RUNNING", "1", worker.id)
    created = [e["trial"] for e in _events(store, job, "trial_created")]
    assert len(created) == len(set(created)), f"a trial was created twice: {created}"
    _cancel_and_end(store, worker, job)
    assert_exactly_once(store, job)


# --- point 6: fencing between chiefs --------------------------------------------------------


def test_a_frozen_chief_is_replaced_and_writes_nothing_when_it_wakes(control_plane) -> None:
    """SIGSTOP the active chief while it waits on the inbox; a standby takes over and must
    see the reports sent meanwhile (each chief reads under its own consumer name; the
    active one takes over what the frozen one was handed). Woken, the old chief must not
    write: the job ends with exactly its trials, each created once."""
    cluster = control_plane(workers=0)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", ("search.max_trials=3",)))
    worker = _scripted(control_plane, store, slots=1)
    first = worker.claim()
    old = cluster.chiefs[0]
    old_id = store.client.get(store.keys.chief_lock)
    os.killpg(old.pid, signal.SIGSTOP)
    try:
        cluster.start_chief()
        _until(lambda: store.client.get(store.keys.chief_lock) not in (None, old_id), 30)
        worker.end(first)  # this end message may be handed to the frozen chief
        second = worker.claim(timeout=30)  # the new chief saw it and made the next trial
    finally:
        os.killpg(old.pid, signal.SIGCONT)
    worker.end(second)
    worker.end(worker.claim(timeout=30))
    results = wait(store, job, 120)
    assert results["state"] in ("completed", "failed")  # no model files: finalize decides
    trials = [t["trial"] for t in results["trials"]]
    created = [e["trial"] for e in _events(store, job, "trial_created")]
    assert len(trials) == 3 and sorted(created) == sorted(trials), created
    assert all(t["state"] == "COMPLETED" and t["attempts"] == 1 for t in results["trials"])
    assert_exactly_once(store, job, 3)


def test_a_chief_stuck_in_a_step_is_replaced_within_its_bound(control_plane, tmp_path) -> None:
    """The active chief's main loop blocks for good in a round (its lock keeper thread
    runs on): the keeper stops extending the lock after TUNECLUSTER_CHIEF_STUCK_S, the
    lock lapses one lifetime later, the standby takes over and the job completes with
    every trial exactly once."""
    marker = tmp_path / "hung"
    cluster = control_plane(workers=0, env={"TUNECLUSTER_CHIEF_STUCK_S": "3",
                                            "TUNECLUSTER_TEST_HANG_AT": f"chief_tick:{marker}"})
    store = Store.from_url(cluster.url)
    _until(lambda: marker.exists(), 60)
    hung = int(marker.read_text())
    assert hung == cluster.chiefs[0].pid
    held_by = store.client.get(store.keys.chief_lock)
    assert held_by is not None
    cluster.start_chief()  # the standby
    started = time.monotonic()
    _until(lambda: store.client.get(store.keys.chief_lock) not in (None, held_by), 60)
    replaced_s = time.monotonic() - started
    # stuck 3 s + a lock lifetime (4 s) + the keeper's and the standby's periods
    assert replaced_s < 3 + LOCK_S + 3, f"the standby took over after {replaced_s:.1f} s"
    assert cluster.chiefs[0].poll() is None, "the stuck chief crashed instead"
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", ("search.max_trials=2",)))
    worker = _scripted(control_plane, store, slots=1)
    worker.end(worker.claim(timeout=60))
    worker.end(worker.claim(timeout=60))
    wait(store, job, 120)
    assert_exactly_once(store, job, 2)
    os.killpg(hung, signal.SIGKILL)


def test_a_chief_that_lost_its_lock_mid_round_commits_nothing(control_plane) -> None:
    """The lock is taken from the active chief while it waits on the inbox (as when it
    stalled past the lock's expiry and a standby took over), and a report arrives in
    that same read: the round it then runs must not be committed."""
    cluster = control_plane(workers=0)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", ("search.max_trials=3",)))
    worker = _scripted(control_plane, store, slots=1)
    first = worker.claim()
    time.sleep(1)  # the chief settles into waiting on the inbox
    before = _events(store, job, "trial_created")  # the claimed one, and one ready ahead
    assert 1 <= len(before) < 3
    store.client.set(store.keys.chief_lock, "a-standby-that-does-nothing", px=60_000)
    worker.end(first)  # read by the deposed chief's pending inbox read
    time.sleep(3)
    assert _events(store, job, "trial_created") == before, \
        "a chief without the lock created a trial"
    store.client.delete(store.keys.chief_lock)  # the standby is gone: the chief resumes
    worker.end(worker.claim(timeout=60))
    worker.end(worker.claim(timeout=60))
    results = wait(store, job, 60)
    created = [e["trial"] for e in _events(store, job, "trial_created")]
    assert len(results["trials"]) == 3 and len(created) == 3, created
    assert all(t["state"] == "COMPLETED" and t["attempts"] == 1 for t in results["trials"])
    assert_exactly_once(store, job, 3)
    consumers = {c["name"] for c in store.client.xinfo_consumers(store.keys.inbox, "chief")}
    assert consumers and all(name.startswith("chief-") for name in consumers), consumers


# --- point 7: Redis restored from an older copy ---------------------------------------------


def test_a_chief_reloads_after_redis_lost_writes(control_plane) -> None:
    """Redis restarted from a snapshot older than the chief's memory (what AOF's last
    second, or a restore from backup, loses): the chief must reload from Redis rather
    than trust trials Redis no longer has, and the job must still end with max_trials
    distinct trials, none lost."""
    cluster = control_plane(workers=2)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.max_trials=6", "train.epochs=2")))
    _until(lambda: sum(r.get("state") == "COMPLETED" for r in store.jobs.trials(job)) >= 1)
    store.client.save()  # the snapshot the restart goes back to
    _until(lambda: sum(r.get("state") == "COMPLETED" for r in store.jobs.trials(job)) >= 4)
    _restart_redis(cluster, after_s=0.5, appendonly=False)  # loads the older dump.rdb
    results = wait(store, job, 240)
    assert results["state"] == "completed", results.get("error")
    assert len({t["trial"] for t in results["trials"]}) == len(results["trials"]) == 6
    assert all(t["state"] == "COMPLETED" for t in results["trials"]), results["trials"]
    assert_exactly_once(store, job, 6)


# --- point 9: a failed search stays failed across a chief restart --------------------------


def test_a_failed_search_is_not_resumed_by_a_restarted_chief(control_plane) -> None:
    cluster = control_plane(workers=0)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.max_trials=10", "search.max_consecutive_failed_trials=1")))
    worker = _scripted(control_plane, store, slots=2)
    failing, running = worker.claim(), worker.claim()
    worker.end(failing, state="FAILED")  # the search has failed; `running` winds down
    _until(lambda: store.jobs.trial(job, running.trial).get("stop") == "1", 30)
    # (a trial the chief made for the slot just freed, before it read the failure, is
    # among these: it is cancelled with the job)
    made = store.jobs.trial_ids(job)
    worker.slots = 8  # capacity joins: a chief that forgot the failure would fill it
    old_id = store.client.get(store.keys.chief_lock)
    os.killpg(cluster.chiefs[0].pid, signal.SIGKILL)
    cluster.start_chief()
    _until(lambda: store.client.get(store.keys.chief_lock) not in (None, old_id), 3 * LOCK_S)
    # The new chief is active: it has loaded the job; three of its probe beats (one per
    # housekeeping, which also counts the 8 free slots) and the ticks between them are
    # rounds in which a chief that forgot the failure would fill those slots.
    beats: set[str] = set()
    _until(lambda: beats.add(store.client.get(store.keys.chief_beat) or "") or len(beats) > 3,
           30, every=0.05)
    assert store.jobs.trial_ids(job) == made, "the restarted chief resumed a failed search"
    worker.end(running)
    results = wait(store, job, 60)
    assert results["state"] == "failed" and "consecutive" in results["error"]
    assert_exactly_once(store, job, len(made))


# --- point 11: finalization while no slot is free -------------------------------------------


def test_a_search_that_is_over_is_finalized_with_no_worker_alive(control_plane) -> None:
    cluster = control_plane(workers=0)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", ("search.max_trials=1",)))
    worker = _scripted(control_plane, store, slots=1)
    only = worker.claim()
    worker.leave()  # the last worker goes away while its trial ends
    time.sleep(2)
    worker.end(only, state="FAILED")
    results = wait(store, job, 30)
    assert results["state"] == "failed" and "no trial completed" in results["error"]
    assert_exactly_once(store, job, 1)


def test_a_search_that_is_over_is_finalized_while_other_jobs_hold_every_slot(
        control_plane) -> None:
    cluster = control_plane(workers=0)
    store = Store.from_url(cluster.url)
    low = submit(store, prepare_job(EXAMPLES / "digits.yaml", ("search.max_trials=1",)))
    worker = _scripted(control_plane, store, slots=1)
    only = worker.claim()
    high = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.max_trials=50", "priority=10")))
    worker.end(only, state="FAILED")
    busy = worker.claim()  # the high-priority job takes the only slot at once
    assert busy.job == high
    results = wait(store, low, 30)
    assert results["state"] == "failed"
    assert_exactly_once(store, low, 1)


def test_trials_kept_ready_ahead_for_a_job_never_delay_a_higher_priority_one(
        control_plane) -> None:
    """A random search keeps a trial ready beyond its free slot (READY_AHEAD); a
    higher-priority job submitted meanwhile must get the slot that frees up next, not
    wait behind the trial queued before it."""
    cluster = control_plane(workers=0)
    store = Store.from_url(cluster.url)
    low = submit(store, prepare_job(EXAMPLES / "digits.yaml", ("search.max_trials=5",)))
    worker = _scripted(control_plane, store, slots=1)
    first = worker.claim()
    _until(lambda: store.queue.ready_count() >= 1)  # the low job's trial kept ready ahead
    high = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.max_trials=1", "priority=3")))
    _until(lambda: _events(store, high, "trial_created"))
    assert store.queue.ready_count() == 2
    worker.end(first)
    assert (first.job, worker.claim().job) == (low, high)
    _cancel_and_end(store, worker, low, high)
    assert_exactly_once(store, low)
    assert_exactly_once(store, high, 1)


def test_a_running_gang_holds_all_its_slots_when_the_chief_tops_up(control_plane) -> None:
    """Two one-slot workers run one trial of a job with two workers per trial: every
    slot is busy, so the chief keeps only its one trial ready ahead (counting the running
    trial as one slot, it kept a second: two trials of two slots each waiting for two)."""
    cluster = control_plane(workers=0)
    store = Store.from_url(cluster.url)
    pair = [ScriptedWorker(store, 1, "w1"), ScriptedWorker(store, 1, "w2")]
    control_plane.scripted.extend(pair)  # type: ignore[attr-defined]
    time.sleep(2.5)  # the chief's worker census counts both slots
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.max_trials=10", "resources.workers_per_trial=2")))
    place = _until(lambda: store.queue.claim("w1", LEASE_S, address="127.0.0.1:29500"))
    assert isinstance(place, Claim) and place.forming
    started = store.queue.claim("w2", LEASE_S, address="127.0.0.1:29501")
    assert started is not None and started.gang and started.trial == place.trial
    time.sleep(3)  # several chief rounds (one per tick at least)
    trials = store.jobs.trials(job)
    assert sorted(t["state"] for t in trials) == ["READY", "RUNNING"], trials
    assert store.queue.ready_count() == 1


# --- point 12: clocks ------------------------------------------------------------------------

SKEWED_CLOCK = textwrap.dedent("""
    import time
    _real = time.time
    time.time = lambda: _real() - 60.0  # this host's clock is a minute behind
""")


def test_a_worker_with_a_skewed_clock_keeps_its_leases(control_plane, tmp_path) -> None:
    cluster = control_plane(workers=0)
    skew = tmp_path / "skew"
    skew.mkdir()
    (skew / "sitecustomize.py").write_text(SKEWED_CLOCK)
    env = {**cluster.env, "PYTHONPATH": os.pathsep.join(
        [str(skew), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-m", "tunecluster", "worker", "--redis",
                             cluster.url, "--artifacts", str(cluster.artifacts)],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    cluster.workers.append(proc)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.max_trials=2", "train.epochs=3", "search.max_retries_per_trial=0")))
    results = wait(store, job, 180)
    assert results["state"] == "completed", results.get("error")
    assert [(t["state"], t["attempts"]) for t in results["trials"]] == [("COMPLETED", 1)] * 2
    assert_exactly_once(store, job, 2)
