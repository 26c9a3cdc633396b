"""Trials trained by several workers at once (``resources.workers_per_trial``): real
workers form a gang, train one trial under MultiWorkerMirroredStrategy over loopback,
lose a member and resume, and a gang that cannot form leaves other jobs running."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from starlette.testclient import TestClient

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster
from tunecluster.dashboard.app import create_app
from tunecluster.store import Store
from tunecluster.worker.gang import CAUSE_GRACE_S, CHECK_S

from .conftest import FAST_LIVENESS, cli, run_job
from .invariants import assert_exactly_once
from .test_chaos import _until, _worker_pid

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

PEER_TIMEOUT_S = 2.0
# Scheduling delays of three TensorFlow processes on this 2-core machine, and the test's
# own polling; what the README promises is computed from the cluster's settings.
MARGIN_S = 4.0


def _spec(tmp_path: Path, name: str, *, workers: int, epochs: int,
          neurons: tuple[int, ...] = (64,)) -> Path:
    """The course's MLP on digits, a grid over ``neurons`` (one trial per value)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        data: {{dataset: digits, split: {{valid: 0.2, test: 0.2, seed: 42}}}}
        model:
          builtin: mlp
          task: classification
          input: flatten
          hyperparameters:
            n_hidden: {{choice: [1]}}
            n_neurons: {{choice: {list(neurons)}}}
            learning_rate: {{choice: [0.005]}}
            optimizer: {{choice: [adam]}}
        search: {{algorithm: grid, objective: val_accuracy, max_trials: {len(neurons)}}}
        train: {{epochs: {epochs}, batch_size: 32}}
        resources: {{workers_per_trial: {workers}}}
    """))
    return path


def _trial_result(store: Store, job: str, trial: str) -> dict:
    return json.loads(store.jobs.trial(job, trial)["result"])


def test_a_gang_of_two_trains_each_trial_on_both_workers(cluster, store: Store,
                                                         tmp_path: Path) -> None:
    gang = run_job(store, _spec(tmp_path, "gang", workers=2, epochs=5))
    single = run_job(store, _spec(tmp_path, "single", workers=1, epochs=5))
    assert gang["state"] == single["state"] == "completed"
    (trial,) = gang["trials"]
    assert trial["state"] == "COMPLETED" and trial["attempts"] == 1
    assert [m["rank"] for m in trial["workers"]] == [0, 1]
    assert len({m["worker"] for m in trial["workers"]}) == 2  # two different workers
    assert trial["worker"] == trial["workers"][0]["worker"]  # rank 0 recorded it
    result = _trial_result(store, gang["job"], trial["trial"])
    assert result["distribution"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert result["distribution"]["replicas"] == 2
    assert result["distribution"]["global_batch_size"] == 32  # the same global batch
    assert result["distribution"]["per_replica_batch_size"] == 16
    assert _trial_result(store, single["job"], "0")["distribution"]["replicas"] == 1
    # the same model and data, split over two workers: a comparable score
    assert gang["best"]["score"] > 0.8
    assert abs(gang["best"]["score"] - single["best"]["score"]) < 0.06
    assert gang["test"]["accuracy"] > 0.8  # the best model was saved and loads
    events = [e for e in store.events.read(gang["job"]) if e.type == "trial_started"]
    assert [len(e.data["workers"]) for e in events] == [2]
    assert_exactly_once(store, gang["job"], 1)


def test_a_gang_larger_than_the_cluster_waits_and_other_jobs_run(cluster, store: Store,
                                                                 tmp_path: Path) -> None:
    big = submit(store, prepare_job(_spec(tmp_path, "big", workers=3, epochs=1), []))
    _until(lambda: store.jobs.get(big).fields.get("waiting"), timeout=60)
    shown = cli("status", big, "--redis", cluster.url)
    assert shown.returncode == 0, shown.stderr
    assert "waiting: each trial needs 3 workers" in shown.stdout
    assert "2 alive" in shown.stdout
    # the dashboard says it too, in the Jobs view's row and the Job view's document
    with TestClient(create_app(cluster.url), base_url="http://127.0.0.1") as web:
        row = next(r for r in web.get("/api/jobs").json() if r["job"] == big)
        assert "needs 3 workers" in row["waiting"]
        assert "2 alive" in web.get(f"/api/jobs/{big}").json()["waiting"]
    small = run_job(store, _spec(tmp_path, "small", workers=1, epochs=1))
    assert small["state"] == "completed"
    (waiting,) = store.jobs.trials(big)
    assert waiting["state"] == "READY" and waiting["attempts"] == "0"  # never half-formed
    assert store.client.zcard(store.keys.forming) == 0
    store.jobs.request_cancel(big)
    assert wait(store, big, timeout_s=60)["state"] == "cancelled"
    assert_exactly_once(store, big, 1)
    assert_exactly_once(store, small["job"], 1)


def test_cancel_stops_every_member(cluster, store: Store, tmp_path: Path) -> None:
    job = submit(store, prepare_job(_spec(tmp_path, "cancelled", workers=2, epochs=500), []))
    _, members = _members_at_epoch(store, job, 1)
    processes = [_gang_process(_worker_pid(store, m["worker"])) for m in members]
    store.jobs.request_cancel(job)
    results = wait(store, job, timeout_s=60)
    assert results["state"] == "cancelled"
    (trial,) = results["trials"]
    assert trial["state"] == "CANCELLED" and trial["epochs"] < 500
    assert_exactly_once(store, job, 1)
    _until(lambda: all(_gone(p) for p in processes), timeout=30)


def _gang_process(worker_pid: int) -> psutil.Process:
    """The worker's gang trial process: its newest trial process (on CPU the slot keeps
    its warm one for trials of one worker beside it)."""
    trial_processes = [p for p in psutil.Process(worker_pid).children()
                       if "spawn_main" in " ".join(p.cmdline())]
    assert len(trial_processes) == 2, trial_processes
    return max(trial_processes, key=lambda p: p.create_time())


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _members_at_epoch(store: Store, job: str, epoch: int) -> tuple[dict, list[dict]]:
    def running() -> tuple[dict, list[dict]] | None:
        for row in store.jobs.trials(job):
            if row.get("state") == "RUNNING" and int(row.get("last_epoch") or 0) >= epoch:
                return row, json.loads(row["gang"])
        return None

    return _until(running, timeout=120, every=0.05)  # type: ignore[return-value]


@pytest.mark.timeout(420)
def test_a_lost_member_stops_the_gang_within_seconds_and_the_retry_resumes(
        tmp_path: Path) -> None:
    env = {**FAST_LIVENESS, "TUNECLUSTER_GANG_PEER_TIMEOUT_S": str(PEER_TIMEOUT_S)}
    with LocalCluster(workers=3, artifacts=tmp_path / "artifacts", log_dir=tmp_path / "logs",
                      env=env) as c:
        _lose_members(Store.from_url(c.url), tmp_path)


def _lose_members(store: Store, tmp_path: Path) -> None:
    # 1. A member's trial process is SIGKILLed: its worker releases the trial at once.
    job = submit(store, prepare_job(_spec(tmp_path, "crash", workers=2, epochs=6), []))
    row, members = _members_at_epoch(store, job, 2)
    leader = _gang_process(_worker_pid(store, members[0]["worker"]))
    follower = _gang_process(_worker_pid(store, members[1]["worker"]))
    killed_at = time.monotonic()
    follower.send_signal(signal.SIGKILL)
    _until(lambda: _gone(leader), timeout=60, every=0.05)
    assert time.monotonic() - killed_at < CHECK_S + MARGIN_S
    results = wait(store, job, timeout_s=180)
    (trial,) = results["trials"]
    assert trial["state"] == "COMPLETED" and trial["attempts"] == 2
    assert trial["resumed_from_epoch"] >= 2  # from the checkpoint, not from scratch
    assert "killed by SIGKILL" in store.client.lrange(
        store.keys.trial_errors(job, trial["trial"]), 0, -1)[0]
    assert sorted(int(e) for e in store.jobs.epochs(job, trial["trial"])) == list(range(1, 7))
    assert_exactly_once(store, job, 1)

    # 2. A member's worker falls silent (SIGSTOPped: frozen, its trial process still
    # trains, so TensorFlow's collectives see nothing): only the workers' peer check can
    # tell, and it names the member. (A worker SIGKILLed with its processes is seen by
    # TensorFlow first: test_a_member_lost_to_tensorflow_first_is_retried_not_failed.)
    # 12 epochs here, not 6: the gang trains on while the check waits out the peer
    # timeout, and must still be training when it fires.
    job = submit(store, prepare_job(_spec(tmp_path, "lost", workers=2, epochs=12), []))
    row, members = _members_at_epoch(store, job, 2)
    survivor = _gang_process(_worker_pid(store, members[0]["worker"]))
    silent = psutil.Process(_worker_pid(store, members[1]["worker"]))
    frozen_at = time.monotonic()
    silent.suspend()
    try:
        _until(lambda: _gone(survivor), timeout=60, every=0.05)
        # README: the others stop within the peer timeout plus one check
        assert time.monotonic() - frozen_at < PEER_TIMEOUT_S + CHECK_S + MARGIN_S
        results = wait(store, job, timeout_s=180)
    finally:
        silent.resume()
    (trial,) = results["trials"]
    assert trial["state"] == "COMPLETED" and trial["attempts"] == 2
    assert trial["resumed_from_epoch"] >= 2
    lost = members[1]["worker"]
    error = store.client.lrange(store.keys.trial_errors(job, trial["trial"]), 0, -1)[0]
    assert error.startswith(f"gang member {lost} lost: silent for"), error
    assert lost not in {m["worker"] for m in trial["workers"]}  # re-formed without it
    assert_exactly_once(store, job, 1)


def test_a_tf_config_in_the_workers_environment_reaches_no_single_trial(
        tmp_path: Path) -> None:
    """Only a gang's own processes get a TF_CONFIG: a worker started where one is set
    (a TFJob's pod, a shell) still trains trials of one worker on its own."""
    stray = json.dumps({"cluster": {"worker": ["10.255.0.1:2222", "10.255.0.2:2222"]},
                        "task": {"type": "worker", "index": 0}})
    with LocalCluster(workers=1, artifacts=tmp_path / "artifacts", log_dir=tmp_path / "logs",
                      env={**FAST_LIVENESS, "TF_CONFIG": stray}) as c:
        store = Store.from_url(c.url)
        results = run_job(store, _spec(tmp_path, "alone", workers=1, epochs=1),
                          timeout_s=120)
        assert results["state"] == "completed", results
        assert _trial_result(store, results["job"], "0")["distribution"]["replicas"] == 1
        assert_exactly_once(store, results["job"], 1)


@pytest.mark.timeout(300)
def test_a_member_lost_to_tensorflow_first_is_retried_not_failed(tmp_path: Path) -> None:
    """TensorFlow's coordination service may see a dead member before the workers' own
    check (here: never within the test, 120 s): the collective error it raises in the
    survivor still ends the attempt for a retry, not as a FAILED trial."""
    env = {**FAST_LIVENESS, "TUNECLUSTER_GANG_PEER_TIMEOUT_S": "120"}
    with LocalCluster(workers=3, artifacts=tmp_path / "artifacts", log_dir=tmp_path / "logs",
                      env=env) as c:
        store = Store.from_url(c.url)
        job = submit(store, prepare_job(_spec(tmp_path, "tf-sees", workers=2, epochs=6), []))
        _, members = _members_at_epoch(store, job, 2)
        os.kill(_worker_pid(store, members[1]["worker"]), signal.SIGKILL)
        results = wait(store, job, timeout_s=200)
        (trial,) = results["trials"]
        assert trial["state"] == "COMPLETED" and trial["attempts"] == 2, trial
        assert trial["resumed_from_epoch"] >= 2
        errors = store.client.lrange(store.keys.trial_errors(job, trial["trial"]), 0, -1)
        assert "a gang member was lost" in errors[0], errors
        assert_exactly_once(store, job, 1)


def test_run_refuses_a_gang_larger_than_its_embedded_cluster(tmp_path: Path) -> None:
    done = cli("run", str(_spec(tmp_path, "too-big", workers=3, epochs=1)), "--workers", "2",
               "--artifacts", str(tmp_path / "artifacts"), timeout=120)
    assert done.returncode == 1
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines[-1] == ("error: resources.workers_per_trial: each trial needs 3 workers;"
                         " this run starts 2 (--workers 3 or more)"), done.stderr


def test_consecutive_gang_trials_run_on_members_started_ahead(tmp_path: Path) -> None:
    """Each gang trial starts its slot's next member while it trains (forced on here:
    this machine has fewer cores than the default asks for): consecutive gang trials
    complete, each in a member process of its own (TensorFlow's collectives are
    configured once per process)."""
    env = {**FAST_LIVENESS, "TUNECLUSTER_GANG_PREWARM_MIN_CPUS": "1"}
    with LocalCluster(workers=2, artifacts=tmp_path / "artifacts", log_dir=tmp_path / "logs",
                      env=env) as c:
        store = Store.from_url(c.url)
        path = _spec(tmp_path, "in-a-row", workers=2, epochs=2, neurons=(64, 48, 32))
        results = run_job(store, path, timeout_s=240)
        assert results["state"] == "completed"
        assert [t["state"] for t in results["trials"]] == ["COMPLETED"] * 3
        processes = [_trial_result(store, results["job"], t["trial"])["process"]
                     for t in results["trials"]]
        assert len(set(processes)) == 3  # a fresh member process for every gang trial
        assert_exactly_once(store, results["job"], 3)


# docs/how-it-works.md: "Collectives also time out after 300 s
# (TUNECLUSTER_COLLECTIVE_TIMEOUT_S)". Set short here, and below the 10 s after which
# TensorFlow's coordination service declares a task that stopped beating unhealthy (a
# frozen process beats no more: that check would end the gang too, with another error).
# The margin covers the survivor's grace for the member that knows why
# (gang.CAUSE_GRACE_S), the step in flight and this 2-core machine's scheduling delays.
COLLECTIVE_TIMEOUT_S = 5.0


@pytest.mark.timeout(300)
def test_a_member_that_stops_answering_ends_the_gang_after_the_collective_timeout(
        tmp_path: Path) -> None:
    """A member's trial process frozen (SIGSTOP) while its worker beats on: no crash, no
    silent worker, so neither the workers' peer check nor the member's worker can tell.
    The survivor's next collective waits for it and fails after the collective timeout;
    the attempt is retried from its checkpoint (a lost member, never a FAILED trial)."""
    env = {**FAST_LIVENESS, "TUNECLUSTER_COLLECTIVE_TIMEOUT_S": str(COLLECTIVE_TIMEOUT_S)}
    with LocalCluster(workers=2, artifacts=tmp_path / "artifacts", log_dir=tmp_path / "logs",
                      env=env) as c:
        store = Store.from_url(c.url)
        job = submit(store, prepare_job(_spec(tmp_path, "frozen", workers=2, epochs=6), []))
        _, members = _members_at_epoch(store, job, 2)
        survivor = _gang_process(_worker_pid(store, members[0]["worker"]))
        frozen = _gang_process(_worker_pid(store, members[1]["worker"]))
        frozen_at = time.monotonic()
        frozen.suspend()
        try:
            _until(lambda: _gone(survivor), timeout=COLLECTIVE_TIMEOUT_S + 60, every=0.05)
            ended_s = time.monotonic() - frozen_at
        finally:
            if not _gone(frozen):
                frozen.resume()
        assert ended_s < COLLECTIVE_TIMEOUT_S + CAUSE_GRACE_S + MARGIN_S, (
            f"the gang ended {ended_s:.1f}s after its member froze; the collective timeout"
            f" is {COLLECTIVE_TIMEOUT_S:g}s (+{CAUSE_GRACE_S:g}s grace, {MARGIN_S:g}s margin)")
        _until(lambda: _gone(frozen), timeout=30)  # its worker killed it, frozen as it was
        results = wait(store, job, timeout_s=180)
        (trial,) = results["trials"]
        assert trial["state"] == "COMPLETED" and trial["attempts"] == 2, trial
        assert trial["resumed_from_epoch"] >= 2  # from the checkpoint, not from scratch
        error = store.client.lrange(store.keys.trial_errors(job, trial["trial"]), 0, -1)[0]
        # the collective's own deadline ended it (not the coordination service's heartbeat
        # check: UnavailableError, "stopped sending heartbeats")
        assert "a gang member was lost: DeadlineExceededError" in error, error
        assert sorted(int(e) for e in store.jobs.epochs(job, trial["trial"])) == list(
            range(1, 7))
        assert_exactly_once(store, job, 1)
        print(f"\nfrozen member: the gang ended {ended_s:.1f}s after SIGSTOP (collective"
              f" timeout {COLLECTIVE_TIMEOUT_S:g}s)")
