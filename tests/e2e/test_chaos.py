"""Nothing lost: processes killed with SIGKILL at bad moments, Redis restarted, jobs
cancelled, trials that crash their process. Each test asserts the invariant
(``invariants.assert_exactly_once``): the job ends, every trial is created once and is
final with one completion event, none RUNNING, its attempts the runs started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tunecluster import defaults
from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.artifacts import trial_dir
from tunecluster.cluster import LocalCluster
from tunecluster.errors import SpecError
from tunecluster.store import Store
from tunecluster.testhook import STOP_AT_ENV

from .conftest import EXAMPLES, FAST_LIVENESS, cli
from .invariants import assert_exactly_once

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

# Slow enough per epoch to be killed mid-trial (the tests kill at epoch 1 to 3), small
# enough for 2 cores; a few epochs after the kill for the retry to resume into.
LONG = ("search.max_trials=2", "train.epochs=6", "train.batch_size=8",
        "train.steps_per_execution=1", "train.early_stopping=null",
        "search.max_retries_per_trial=1")


def _until(predicate: Callable[[], object], timeout: float = 120, every: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def _running_trial(store: Store, job: str, min_epoch: int) -> dict[str, str] | None:
    for row in store.jobs.trials(job):
        if row.get("state") == "RUNNING" and int(row.get("last_epoch") or 0) >= min_epoch:
            return row
    return None


# The job's cancel flag and, read in the same atomic step, each trial's state and last
# reported epoch: ARGV[1] is the key prefix of the job's trials.
_CANCEL_SNAPSHOT = """
local out = {redis.call('HGET', KEYS[1], 'cancel') or ''}
for _, tid in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local t = redis.call('HMGET', ARGV[1] .. tid, 'state', 'last_epoch')
  table.insert(out, tid)
  table.insert(out, t[1] or '')
  table.insert(out, t[2] or '0')
end
return out
"""


def _trials_once_cancelled(store: Store, job: str) -> dict[str, tuple[str, int]] | None:
    """None until the job's cancel flag is set; then {trial: (state, last epoch)} as they
    were at that moment (give or take one poll)."""
    row = store.client.eval(_CANCEL_SNAPSHOT, 2, store.keys.job(job), store.keys.trials(job),
                            store.keys.trial(job, ""))
    if row[0] != "1":
        return None
    return {row[i]: (row[i + 1], int(row[i + 2] or 0)) for i in range(1, len(row), 3)}


def _worker_pid(store: Store, worker_id: str) -> int:
    return int(store.client.hget(store.keys.worker(worker_id), "pid"))


def _stop_at(point: str, marker: Path) -> dict[str, str]:
    """The environment that holds the first process reaching ``point`` (testhook.py)."""
    return {STOP_AT_ENV: f"{point}:{marker}"}


def _held(marker: Path, timeout: float = 120) -> psutil.Process:
    """The process the test hook stopped, once it is stopped (SIGSTOP, by itself)."""
    pid = int(str(_until(lambda: marker.is_file() and marker.read_text(), timeout)))
    proc = psutil.Process(pid)
    _until(lambda: proc.status() == psutil.STATUS_STOPPED, timeout=10, every=0.01)
    return proc


@pytest.fixture
def make_cluster(tmp_path: Path):
    made: list[LocalCluster] = []

    def make(workers: int = 2, env: dict[str, str] | None = None, **kwargs) -> LocalCluster:
        c = LocalCluster(workers=workers, artifacts=tmp_path / "artifacts",
                         log_dir=tmp_path / "logs", env={**FAST_LIVENESS, **(env or {})},
                         **kwargs).start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


# README, "Liveness defaults": the chief looks for expired leases every min(1 s, lease / 4)
# (its housekeeping, which runs between inbox reads that block up to a chief tick), so a
# dead worker's trial is reaped at worst a lease plus that interval plus a tick after its
# last heartbeat, which came before the SIGKILL. Computed from the cluster's environment.
# The margin covers what the promise does not: scheduling delays of the chief and Redis on
# this shared 2-core machine, and the test's own 50 ms polling.
DETECTION_MARGIN_S = 2.0


def _detection_promise_s(env: dict[str, str]) -> float:
    lease_s = float(env.get("TUNECLUSTER_LEASE_S", defaults.LEASE_S))
    tick_s = float(env.get("TUNECLUSTER_CHIEF_TICK_S", defaults.CHIEF_TICK_S))
    return lease_s + min(1.0, lease_s / 4) + tick_s


def test_worker_killed_mid_trial_is_retried_and_resumes_from_checkpoint(make_cluster) -> None:
    cluster = make_cluster(workers=2)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", LONG))
    victim = _until(lambda: _running_trial(store, job, 3))
    os.killpg(_worker_pid(store, victim["worker"]), signal.SIGKILL)
    killed_at = time.monotonic()
    saved = int(victim["last_epoch"])

    def reaped() -> bool:  # the dead attempt no longer owns the trial
        row = store.jobs.trial(job, victim["trial"])
        return row.get("state") != "RUNNING" or row.get("attempts") != victim["attempts"]

    promise_s = _detection_promise_s(cluster.env)
    try:
        _until(reaped, timeout=promise_s + DETECTION_MARGIN_S + 30, every=0.05)
    except AssertionError:
        pass  # reported by the assertion below, with the time waited
    detection_s = time.monotonic() - killed_at
    assert detection_s <= promise_s + DETECTION_MARGIN_S, (
        f"the dead worker's trial was reaped {detection_s:.1f}s after SIGKILL; the README"
        f" promises at most {promise_s:.1f}s (lease + reap interval + tick), margin"
        f" {DETECTION_MARGIN_S:.1f}s")

    def retried() -> bool:
        row = store.jobs.trial(job, victim["trial"])
        return row.get("attempts") == "2" and row.get("state") in ("RUNNING", "COMPLETED")

    _until(retried, timeout=60)
    results = wait(store, job, 300)
    assert results["state"] == "completed", results.get("error")
    assert_exactly_once(store, job, 2)
    trial = next(t for t in results["trials"] if t["trial"] == victim["trial"])
    assert trial["attempts"] == 2 and trial["state"] == "COMPLETED"
    assert trial["resumed_from_epoch"] >= saved, "the retry started over"
    assert sorted(store.jobs.epochs(job, victim["trial"])) == list(range(1, 7))
    print(f"\nworker kill: reaped {detection_s:.1f}s after SIGKILL (promise {promise_s:.1f}s"
          f" + {DETECTION_MARGIN_S:.1f}s margin), resumed after epoch"
          f" {trial['resumed_from_epoch']}")


def test_worker_killed_after_its_last_epoch_report_is_retried_without_training_again(
        make_cluster, tmp_path: Path) -> None:
    """SIGKILL the worker between the trial's last epoch report and its finish (the best
    epoch restored, the model written): the retry resumes after that last epoch, trains
    none, and records the trial with its model; each epoch is recorded once. The trial
    process holds itself at that moment (the test hook), so the kill lands there."""
    marker = tmp_path / "held"
    cluster = make_cluster(workers=1, env=_stop_at("finish", marker))
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (
        "search.max_trials=1", "train.epochs=3", "train.batch_size=8",
        "train.steps_per_execution=1", "train.early_stopping=null",
        "search.max_retries_per_trial=1")))
    held = _held(marker)
    victim = store.jobs.trials(job)[0]
    worker = _worker_pid(store, victim["worker"])
    assert held.ppid() == worker, "the hook held another process than the trial's"
    assert (victim["state"], victim["last_epoch"]) == ("RUNNING", "3"), victim
    assert list(trial_dir(cluster.artifacts, job, victim["trial"]).rglob("model.keras")), \
        "held before the model was written"
    os.killpg(worker, signal.SIGKILL)
    assert store.jobs.trial(job, victim["trial"]).get("state") == "RUNNING"  # not recorded
    cluster.start_worker()  # same environment: the hook's marker exists, it runs on
    results = wait(store, job, 300)
    assert results["state"] == "completed", results.get("error")
    trial = results["trials"][0]
    assert trial["state"] == "COMPLETED" and trial["attempts"] == 2, trial
    assert trial["resumed_from_epoch"] == 3 and trial["epochs"] == 3
    assert re.search(r"/attempt-2-[0-9]+/model\.keras$", trial["model"]), trial["model"]
    assert sorted(store.jobs.epochs(job, victim["trial"])) == [1, 2, 3]
    assert (Path(cluster.artifacts) / job / "best_model.keras").is_file()
    assert_exactly_once(store, job, 1)


def test_worker_lost_without_retries_fails_the_trial_and_the_job_completes(make_cluster):
    cluster = make_cluster(workers=2)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                    (*LONG, "search.max_retries_per_trial=0")))
    victim = _until(lambda: _running_trial(store, job, 2))
    os.killpg(_worker_pid(store, victim["worker"]), signal.SIGKILL)
    cluster.start_worker()  # the survivor finishes; a new one keeps two slots
    results = wait(store, job, 300)
    assert results["state"] == "completed"
    assert_exactly_once(store, job, 2)
    lost = next(t for t in results["trials"] if t["trial"] == victim["trial"])
    assert lost["state"] == "FAILED" and "worker lost" in lost["error"]


def test_all_workers_killed_then_new_ones_finish_the_job(make_cluster) -> None:
    cluster = make_cluster(workers=2)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", LONG))
    _until(lambda: _running_trial(store, job, 1))
    for w in list(cluster.workers):
        os.killpg(w.pid, signal.SIGKILL)
    running = [r for r in store.jobs.trials(job) if r.get("state") == "RUNNING"]
    assert running

    def reaped() -> bool:  # every trial the dead workers ran is back in the queue
        rows = [store.jobs.trial(job, r["trial"]) for r in running]
        return all(row.get("state") == "READY" for row in rows)

    _until(reaped, timeout=_detection_promise_s(cluster.env) + DETECTION_MARGIN_S, every=0.05)
    for r in running:  # one attempt spent each, within the retry budget
        assert store.jobs.trial(job, r["trial"])["attempts"] == r["attempts"] == "1"
    assert store.jobs.get(job).state == "running"
    cluster.start_worker()
    results = wait(store, job, 300)
    assert results["state"] == "completed"
    assert_exactly_once(store, job, 2)


def test_chief_killed_and_restarted_resumes_without_rerunning(make_cluster) -> None:
    cluster = make_cluster(workers=2)
    store = Store.from_url(cluster.url)
    overrides = ("search.max_trials=5", "train.epochs=3", "search.algorithm=bayesian",
                 "search.num_initial_points=2")
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", overrides))
    _until(lambda: sum(r.get("state") == "COMPLETED" for r in store.jobs.trials(job)) >= 2)
    os.killpg(cluster.chiefs[0].pid, signal.SIGKILL)
    cluster.start_chief()  # it takes over once the dead chief's lock expires
    results = wait(store, job, 300)
    assert results["state"] == "completed", results.get("error")
    assert_exactly_once(store, job, 5)
    assert all(t["attempts"] == 1 for t in results["trials"]), "a trial was re-run"


def test_chief_killed_while_finalizing_and_restarted_finalizes_the_job(make_cluster,
                                                                      tmp_path: Path) -> None:
    """SIGKILL the chief (and its evaluation process) the moment the job turns to
    ``finalizing`` (the chief holds itself there: the test hook): a restarted chief
    finalizes it (test split scored, best model written) and no trial runs again."""
    marker = tmp_path / "held"
    cluster = make_cluster(workers=2, env=_stop_at("finalize", marker))
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", ("search.max_trials=2",
                                                               "train.epochs=2")))
    held = _held(marker)
    assert held.pid == cluster.chiefs[0].pid, "the hook held another process than the chief"
    assert store.jobs.get(job).state == "finalizing"
    assert not (Path(cluster.artifacts) / job / "best_model.keras").exists()
    os.killpg(cluster.chiefs[0].pid, signal.SIGKILL)
    assert store.jobs.get(job).state == "finalizing"  # killed mid-way, not after
    cluster.start_chief()  # same environment: the hook's marker exists, it runs on
    results = wait(store, job, 300)
    assert results["state"] == "completed", results.get("error")
    assert_exactly_once(store, job, 2)
    assert all(t["attempts"] == 1 for t in results["trials"])
    assert results["test"] and "accuracy" in results["test"], results["test"]
    assert (Path(cluster.artifacts) / job / "best_model.keras").is_file()


def test_two_chiefs_one_active_and_the_standby_takes_over(make_cluster) -> None:
    cluster = make_cluster(workers=2)
    cluster.start_chief()
    store = Store.from_url(cluster.url)
    active = _until(lambda: store.client.get(store.keys.chief_lock))
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", ("search.max_trials=4",
                                                               "train.epochs=3")))
    _until(lambda: any(r.get("state") == "COMPLETED" for r in store.jobs.trials(job)))
    pid = int(str(active).split("-")[-2])
    os.killpg(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    _until(lambda: store.client.get(store.keys.chief_lock) not in (None, active), timeout=60,
           every=0.05)
    takeover_s = time.monotonic() - killed_at
    # The dead chief's lock lives at most a lock period after its last renewal; a standby
    # tries for it every min(1 s, lock / 4) (chief/loop.py). The margin is this machine's
    # scheduling delays and the test's 50 ms polling, as for the worker kill above.
    lock_s = float(cluster.env["TUNECLUSTER_CHIEF_LOCK_S"])
    promise_s = lock_s + min(1.0, lock_s / 4)
    assert takeover_s <= promise_s + DETECTION_MARGIN_S, (
        f"the standby took the lock {takeover_s:.1f}s after the active chief's SIGKILL; the"
        f" lock lives {lock_s:.1f}s, retried every {promise_s - lock_s:.1f}s, margin"
        f" {DETECTION_MARGIN_S:.1f}s")
    results = wait(store, job, 300)
    assert results["state"] == "completed"
    assert_exactly_once(store, job, 4)
    assert store.client.get(store.keys.chief_lock) not in (None, active)
    print(f"\nstandby chief: took over {takeover_s:.1f}s after SIGKILL (promise"
          f" {promise_s:.1f}s + {DETECTION_MARGIN_S:.1f}s margin)")


def test_redis_restart_with_aof_and_the_job_completes(make_cluster) -> None:
    cluster = make_cluster(workers=2, appendonly=True)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", LONG))
    _until(lambda: _running_trial(store, job, 2))
    assert cluster.redis is not None
    cluster.redis.stop()
    time.sleep(2)
    cluster.redis.start()
    results = wait(store, job, 300)
    assert results["state"] == "completed", results.get("error")
    assert_exactly_once(store, job, 2)


def test_cancel_stops_running_trials_within_an_epoch(make_cluster) -> None:
    cluster = make_cluster(workers=2)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                    ("search.max_trials=6", "train.epochs=40",
                                     "train.batch_size=8", "train.steps_per_execution=1",
                                     "train.early_stopping=null")))
    _until(lambda: _running_trial(store, job, 1))
    proc = subprocess.Popen([sys.executable, "-m", "tunecluster", "cancel", job, "--redis",
                             cluster.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # The trials as they stood the moment the cancel flag landed (read atomically with it)
    at_cancel = _until(lambda: _trials_once_cancelled(store, job), timeout=60, every=0.002)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    running = {tid: epoch for tid, (state, epoch) in at_cancel.items() if state == "RUNNING"}
    assert running, f"no trial was running when the cancel landed: {at_cancel}"
    results = wait(store, job, 120)
    print(f"\ncancel: running at the cancel {running}; at the end "
          f"{ {t['trial']: (t['state'], t['epochs']) for t in results['trials']} }")
    assert results["state"] == "cancelled"
    states = {t["state"] for t in results["trials"]}
    assert "RUNNING" not in states and "READY" not in states
    assert_exactly_once(store, job)
    for t in results["trials"]:
        epochs = store.jobs.epochs(job, t["trial"])
        assert t["epochs"] == max(epochs, default=0)
        state, before = at_cancel.get(t["trial"], ("(not created)", 0))
        if state == "COMPLETED":
            continue  # ended before the cancel: kept
        # Running then: it ends CANCELLED after at most the epoch it was in. Not running
        # yet: cancelled before it ran, or claimed afterwards and stopped at its first epoch.
        assert t["state"] == "CANCELLED", (t, state)
        assert t["epochs"] <= before + 1, (
            f"trial {t['trial']} was {state} at epoch {before} when the job was cancelled and"
            f" went on to epoch {t['epochs']}")


CRASHING_MODEL = textwrap.dedent('''
    import os
    import keras
    import numpy as np

    def build_model(hp):
        mode = hp.Choice("mode", ["ok", "exit", "oom"])
        if mode == "exit":
            os._exit(3)
        if mode == "oom":
            np.ones((10**7, 10**7))
        model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model
''')


def test_crashing_and_oom_trials_fail_and_the_worker_survives(make_cluster, tmp_path) -> None:
    (tmp_path / "crash.py").write_text(CRASHING_MODEL)
    (tmp_path / "job.yaml").write_text(textwrap.dedent('''
        name: crashing
        data: {dataset: digits}
        model: {module: crash.py}
        search: {algorithm: grid, objective: val_accuracy, max_trials: 3,
                 max_retries_per_trial: 1}
        train: {epochs: 1}
    '''))
    cluster = make_cluster(workers=1)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(tmp_path / "job.yaml"))
    results = wait(store, job, 300)
    assert results["state"] == "completed"
    assert_exactly_once(store, job, 3)
    by_mode = {t["hyperparameters"]["mode"]: t for t in results["trials"]}
    assert by_mode["ok"]["state"] == "COMPLETED"
    assert by_mode["exit"]["state"] == "FAILED"
    assert "crashed" in by_mode["exit"]["error"] and by_mode["exit"]["attempts"] == 2
    assert by_mode["oom"]["state"] == "FAILED" and "Memory" in by_mode["oom"]["error"]
    assert cluster.workers[0].poll() is None, "the worker died with its trial"


def test_job_whose_trials_all_fail_ends_failed_with_a_summary(make_cluster, tmp_path) -> None:
    (tmp_path / "bad.py").write_text(textwrap.dedent('''
        def build_model(hp):
            hp.Int("units", 2, 100)
            # long: the job's error must be longer than a line however few trials ran
            raise RuntimeError("broken model: the layer sizes of this model never add up,"
                               " whatever the hyperparameters say")
    '''))
    (tmp_path / "job.yaml").write_text(textwrap.dedent('''
        name: all-fail
        data: {dataset: digits}
        model: {module: bad.py, hyperparameters: {units: {int: [2, 100]}}}
        search: {algorithm: random, objective: val_accuracy, max_trials: 20,
                 max_consecutive_failed_trials: 3}
        train: {epochs: 1}
    '''))
    cluster = make_cluster(workers=1)
    store = Store.from_url(cluster.url)
    # submit-time discovery builds the model once: rejected before anything is queued
    with pytest.raises(SpecError, match="broken model"):
        prepare_job(tmp_path / "job.yaml")
    # accepted when discovery is skipped, then every trial fails on the workers
    job = submit(store, prepare_job(tmp_path / "job.yaml", discover=False))
    results = wait(store, job, 300)
    assert results["state"] == "failed"
    assert "broken model" in results["error"]
    assert len(results["trials"]) < 20
    assert_exactly_once(store, job)
    # the CLI prints the job's error on one line, however long (logs are grepped)
    shown = cli("status", job, "--redis", cluster.url)
    assert shown.returncode == 0, shown.stderr
    assert len(results["error"]) > 140
    assert f"error: {results['error']}" in shown.stdout.splitlines()


def test_sigterm_releases_the_running_trial_without_spending_an_attempt(make_cluster) -> None:
    cluster = make_cluster(workers=2)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                    (*LONG, "search.max_retries_per_trial=0")))
    victim = _until(lambda: _running_trial(store, job, 2))
    pid = _worker_pid(store, victim["worker"])
    os.kill(pid, signal.SIGTERM)
    proc = next(p for p in cluster.workers if p.pid == pid)
    assert proc.wait(30) == 0, "the worker did not exit cleanly on SIGTERM"
    cluster.start_worker()
    results = wait(store, job, 300)
    assert results["state"] == "completed"
    assert_exactly_once(store, job, 2)
    trial = next(t for t in results["trials"] if t["trial"] == victim["trial"])
    # released, not lost: no attempt spent (retries were 0), resumed from its checkpoint
    assert trial["state"] == "COMPLETED" and trial["attempts"] == 1
    assert trial["resumed_from_epoch"] >= 2


def test_foreign_data_in_redis_does_not_crash_the_chief_or_workers(make_cluster) -> None:
    cluster = make_cluster(workers=1)
    store = Store.from_url(cluster.url)
    r, k = store.client, store.keys
    r.hset(k.job("forged"), mapping={"name": "forged", "state": "queued", "spec": "{trunc"})
    r.zadd(k.jobs_active, {"forged": 0})
    r.xadd(k.inbox, {"type": "end", "job": "nope", "trial": "x"})
    r.xadd(k.inbox, {"type": "epoch", "job": "forged", "metrics": "[1,2"})
    r.xadd(k.inbox, {"garbage": "1"})
    r.rpush(k.ready, "no-slash", "ghost/00")
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                    ("search.max_trials=2", "train.epochs=1")))
    results = wait(store, job, 240)
    assert results["state"] == "completed"
    assert_exactly_once(store, job, 2)
    assert r.hget(k.job("forged"), "state") == "failed"
    assert "forged" not in store.jobs.active()
    out = cli("status", "forged", "--redis", cluster.url)
    assert out.returncode == 1 and "forged" in out.stderr and len(out.stderr.splitlines()) == 1
    assert all(p.poll() is None for p in cluster.workers + cluster.chiefs)
