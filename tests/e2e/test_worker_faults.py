"""Worker-side faults through real processes: stuck trials (cancel, ``train.trial_timeout``),
non-finite side metrics, a reaped attempt that is still alive, orphaned trial processes
and a hanging ``build_model`` at submit time."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.artifacts import CHECKPOINT
from tunecluster.cluster import LocalCluster
from tunecluster.store import Store
from tunecluster.worker.child import WATCHDOG_S

from .conftest import EXAMPLES, FAST_LIVENESS, cli
from .invariants import assert_exactly_once
from .test_chaos import _until, _worker_pid

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

HEARTBEAT_S = float(FAST_LIVENESS["TUNECLUSTER_HEARTBEAT_S"])
CANCEL_GRACE_S = 2.0  # README: a cancelled trial's process is killed after a 2 s grace
# What the promised times below do not cover: scheduling delays of the worker, its trial
# process, the chief and Redis on this shared 2-core machine, and the test's own polling.
MARGIN_S = 1.5

# A model whose first training step never returns: a blocked op, as a stalled input
# pipeline or a deadlocked collective would be. Building it does not run the op; running
# it writes the process's pid to STALLED first (the test waits for that, not a while).
STALLING_MODEL = textwrap.dedent('''
    import os
    import time

    import keras
    import tensorflow as tf

    STALLED = {stalled!r}

    def _stall(x):
        with open(STALLED, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)
        return x

    class Stall(keras.layers.Layer):
        def call(self, x):
            y = tf.py_function(_stall, [x], x.dtype)
            y.set_shape(x.shape)
            return y

    def build_model(hp):
        units = hp.Int("units", 4, 16)
        model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), Stall(),
                                  keras.layers.Dense(units, activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model
''')

# Tracks a metric that is +inf (float16 overflows on the diabetes targets' squares) while
# the loss and the objective stay finite. Only built-in objects: the chief loads the
# saved model for its test-set score without the user's module.
INF_METRIC_MODEL = textwrap.dedent('''
    import keras

    def build_model(hp):
        model = keras.Sequential([keras.Input((10,)),
                                  keras.layers.Dense(hp.Int("units", 4, 16), activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse",
                      metrics=["mae", keras.metrics.MeanSquaredError(name="mse16",
                                                                     dtype="float16")])
        return model
''')

# Each training step waits while the trial process's pid is listed in PAUSE: the test
# freezes one attempt inside an epoch without freezing the others.
GATED_MODEL = textwrap.dedent('''
    import os
    import time

    import keras
    import tensorflow as tf

    PAUSE = {pause!r}

    def _paused():
        try:
            with open(PAUSE) as f:
                return str(os.getpid()) in f.read().split()
        except OSError:
            return False

    def _gate(x):
        while _paused():
            time.sleep(0.05)
        time.sleep(0.03)
        return x

    class Gate(keras.layers.Identity):
        def call(self, x):
            y = tf.py_function(_gate, [x], x.dtype)
            y.set_shape(x.shape)
            return y

    # Saved as a plain Identity layer: the chief, which never runs the user's module,
    # loads the best model for its test-set score.
    Gate.__module__, Gate.__name__, Gate.__qualname__ = "keras.layers", "Identity", "Identity"

    def build_model(hp):
        units = hp.Int("units", 4, 16)
        model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), Gate(),
                                  keras.layers.Dense(units, activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model
''')

HANGING_BUILD = textwrap.dedent('''
    import time

    def build_model(hp):
        hp.Int("units", 4, 16)
        time.sleep(3600)
''')


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    made: list[LocalCluster] = []

    def make(workers: int = 1) -> LocalCluster:
        c = LocalCluster(workers=workers, artifacts=tmp_path / "artifacts",
                         log_dir=tmp_path / "logs", env=FAST_LIVENESS).start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def _job_file(tmp_path: Path, source: str, name: str = "faulty", train: str = "{epochs: 2}",
              search: str = "max_trials: 1, max_retries_per_trial: 1",
              data: str = "digits", objective: str = "val_accuracy") -> Path:
    (tmp_path / "model.py").write_text(source)
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f'''
        name: {name}
        data: {{dataset: {data}}}
        model: {{module: model.py}}
        search: {{algorithm: random, objective: {objective}, {search}}}
        train: {train}
    '''))
    return path


def _stalling(tmp_path: Path) -> str:
    """STALLING_MODEL's source; its marker file: ``_stalled(tmp_path)``."""
    return STALLING_MODEL.replace("{stalled!r}", repr(str(tmp_path / "stalled")))


def _stalled(tmp_path: Path) -> int:
    """The pid of the trial process once it is inside the step that never returns."""
    marker = tmp_path / "stalled"
    return int(str(_until(lambda: marker.is_file() and marker.read_text(), timeout=60,
                          every=0.05)))


def _trial_child(worker_pid: int) -> psutil.Process:
    """The worker's trial process (not multiprocessing's helper processes)."""
    children = [p for p in psutil.Process(worker_pid).children()
                if "spawn_main" in " ".join(p.cmdline())]
    assert len(children) == 1, children
    return children[0]


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _running(store: Store, job: str) -> dict[str, str] | None:
    return next((r for r in store.jobs.trials(job) if r.get("state") == "RUNNING"), None)


def test_cancel_kills_a_stuck_trial_and_the_slot_serves_the_next_job(make_cluster,
                                                                      tmp_path) -> None:
    cluster = make_cluster(workers=1)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(_job_file(tmp_path, _stalling(tmp_path))))
    row = _until(lambda: _running(store, job), timeout=60)
    _stalled(tmp_path)  # inside fit, in the step that never returns
    asked = time.monotonic()
    out = cli("cancel", job, "--redis", cluster.url)
    assert out.returncode == 0, out.stderr
    # queued behind it: the same (only) worker must run it once the stuck trial is gone
    after = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                      ("search.max_trials=1", "train.epochs=1")))
    _until(lambda: store.jobs.get(job).state == "cancelled", timeout=30, every=0.05)
    latency = time.monotonic() - asked
    # README: the worker reads the cancel flag on every heartbeat and kills the stuck
    # process after a 2 s grace; the chief then ends the job on its next tick.
    tick_s = float(cluster.env.get("TUNECLUSTER_CHIEF_TICK_S", 0.5))
    promise_s = HEARTBEAT_S + CANCEL_GRACE_S + tick_s
    assert CANCEL_GRACE_S <= latency <= promise_s + MARGIN_S, (
        f"the stuck trial's job was cancelled {latency:.1f}s after `tunecluster cancel`;"
        f" promised: after the {CANCEL_GRACE_S:g}s grace, within {promise_s:.1f}s"
        f" (heartbeat + grace + chief tick), margin {MARGIN_S:.1f}s")
    trial = store.jobs.trial(job, row["trial"])
    assert trial["state"] == "CANCELLED" and trial["attempts"] == "1", trial
    results = wait(store, after, 90)
    assert results["state"] == "completed", results.get("error")
    assert results["trials"][0]["worker"] == row["worker"]
    assert_exactly_once(store, job, 1)
    assert_exactly_once(store, after, 1)
    print(f"\ncancel of a stuck trial: job cancelled {latency:.1f}s after `tunecluster cancel`")


def test_trial_timeout_fails_a_stuck_trial_without_retry(make_cluster, tmp_path) -> None:
    cluster = make_cluster(workers=1)
    store = Store.from_url(cluster.url)
    spec = _job_file(tmp_path, _stalling(tmp_path), train="{epochs: 2, trial_timeout: 3}")
    started = time.monotonic()
    job = submit(store, prepare_job(spec))
    results = wait(store, job, 90)
    [trial] = results["trials"]
    assert trial["state"] == "FAILED", trial
    assert trial["error"] == "trial exceeded train.trial_timeout (3 s)"
    assert trial["attempts"] == 1, "a deterministic timeout must not be retried"
    assert results["state"] == "failed"
    assert cluster.workers[0].poll() is None
    [record] = assert_exactly_once(store, job, 1)
    # docs/reliability.md: killed at its timeout (counted from its claim) plus at most a
    # heartbeat. Both ends are Redis time, stamped at the claim and at the finish.
    ran_s = (int(record["finished"]) - int(record["started"])) / 1000
    assert 3 <= ran_s <= 3 + HEARTBEAT_S + MARGIN_S, (
        f"the trial ran {ran_s:.1f}s from its claim; train.trial_timeout is 3 s, promised"
        f" within a heartbeat ({HEARTBEAT_S:g}s) after it, margin {MARGIN_S:.1f}s")
    print(f"\ntrial_timeout: trial ended {ran_s:.1f}s after its claim, job failed"
          f" {time.monotonic() - started:.1f}s after submit")


def test_non_finite_side_metric_is_recorded_as_null(make_cluster, tmp_path) -> None:
    cluster = make_cluster(workers=1)
    store = Store.from_url(cluster.url)
    spec = _job_file(tmp_path, INF_METRIC_MODEL, data="diabetes", objective="val_mae",
                     search="max_trials: 2, max_retries_per_trial: 0")
    job = submit(store, prepare_job(spec))
    results = wait(store, job, 120)
    assert results["state"] == "completed", results.get("error")
    for t in results["trials"]:
        assert t["state"] == "COMPLETED", t
        assert t["metrics"]["mse16"] is None and t["metrics"]["val_mse16"] is None
        assert t["metrics"]["val_mae"] > 0 and t["score"] == t["metrics"]["val_mae"]
        epochs = store.jobs.epochs(job, t["trial"])
        assert sorted(epochs) == [1, 2]
        assert all(m["val_mse16"] is None for m in epochs.values())
    assert results["test"] and results["test"]["mse16"] is None  # the chief's score too
    csv = cli("results", job, "--csv", "--redis", cluster.url)
    assert csv.returncode == 0, csv.stderr
    assert "val_mse16" in csv.stdout.splitlines()[0]
    table = cli("results", job, "--redis", cluster.url)
    assert table.returncode == 0, table.stderr
    raw = cli("results", job, "--json", "--redis", cluster.url)
    assert raw.returncode == 0 and "Infinity" not in raw.stdout and "NaN" not in raw.stdout
    assert_exactly_once(store, job, 2)


def test_reaped_attempt_still_alive_does_not_touch_the_new_attempts_files(make_cluster,
                                                                         tmp_path) -> None:
    pause = tmp_path / "pause"
    spec = _job_file(tmp_path, GATED_MODEL.replace("{pause!r}", repr(str(pause))),
                     train="{epochs: 6, batch_size: 64, early_stopping: null}")
    cluster = make_cluster(workers=2)
    store = Store.from_url(cluster.url)
    job = submit(store, prepare_job(spec))
    first = _until(lambda: next((r for r in store.jobs.trials(job)
                                 if int(r.get("last_epoch") or 0) >= 1), None), timeout=60)
    trial = first["trial"]
    stale_worker = _worker_pid(store, first["worker"])
    stale_child = _trial_child(stale_worker)
    pause.write_text(str(stale_child.pid))  # attempt 1 freezes inside an epoch ...
    os.kill(stale_worker, signal.SIGSTOP)  # ... and its worker stops renewing the lease
    try:
        results = wait(store, job, 90)  # the other worker retries and completes it
        assert results["state"] == "completed", results.get("error")
        record = store.jobs.trial(job, trial)
        assert record["state"] == "COMPLETED" and record["attempts"] == "2", record
        assert_exactly_once(store, job, 1)
        # The winning attempt's files, as the trial record names them.
        model = (cluster.artifacts / record["model"] if "model" in record
                 else cluster.artifacts / job / "trials" / trial / "model.keras")
        assert model.is_file()
        checkpoint = model.parent / CHECKPOINT
        before = checkpoint.stat().st_mtime_ns
        # Wake the reaped attempt: it finishes its epoch, is refused and must stop.
        pause.write_text("")
    finally:
        os.kill(stale_worker, signal.SIGCONT)
    _until(lambda: any(f"{job}/{trial} lost" in p.read_text()
                       for p in (tmp_path / "logs").glob("worker-*.log")), timeout=30)
    assert checkpoint.stat().st_mtime_ns == before, "the reaped attempt overwrote the checkpoint"
    assert _meta_epoch(checkpoint) == 6
    assert int(json.loads(record["result"])["best_epoch"]) >= 1


def _meta_epoch(path: Path) -> int:
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return int(json.loads(str(data["meta"]))["epoch"])


def test_trial_process_of_a_sigkilled_worker_exits_within_2s(make_cluster, tmp_path) -> None:
    cluster = make_cluster(workers=1)
    store = Store.from_url(cluster.url)
    submit(store, prepare_job(_job_file(tmp_path, _stalling(tmp_path))))
    stalled = _stalled(tmp_path)  # the trial process is inside fit, not waiting on its pipe
    worker = cluster.workers[0].pid
    child = _trial_child(worker)
    assert child.pid == stalled
    os.kill(worker, signal.SIGKILL)  # the worker alone, not its process group
    killed = time.monotonic()
    # README: a trial process dies within 2 s of its worker (the parent-death signal,
    # else its watchdog, which looks every WATCHDOG_S); margin as above.
    promise_s = 2.0
    try:
        _until(lambda: _gone(child), timeout=promise_s + MARGIN_S + 10, every=0.05)
    except AssertionError:
        pass  # reported below, with the time waited
    finally:
        exited_s = time.monotonic() - killed
        if not _gone(child):
            child.kill()
    assert WATCHDOG_S < promise_s
    assert exited_s <= promise_s + MARGIN_S, (
        f"the orphaned trial process exited {exited_s:.2f}s after its worker's SIGKILL;"
        f" promised {promise_s:g}s, margin {MARGIN_S:.1f}s")
    print(f"\norphaned trial process exited {exited_s:.2f}s after its worker")


def test_validate_gives_up_on_a_hanging_build_model(tmp_path) -> None:
    spec = _job_file(tmp_path, HANGING_BUILD)
    started = time.monotonic()
    out = cli("validate", str(spec), env={"TUNECLUSTER_DISCOVER_TIMEOUT_S": "3"}, timeout=60)
    elapsed = time.monotonic() - started
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "build_model(hp) did not return within 3 s" in lines[0], lines[0]
    assert "TUNECLUSTER_DISCOVER_TIMEOUT_S" in lines[0]
    assert elapsed < 40
