"""Ray as the alternative scheduler, end to end: a real Ray head (started once for the
module), a real Redis and a chief process with no native worker, real Keras trials.

Every job here runs on Ray Tune (`--set scheduler=ray`); the results must have the
shape a native job's have, and every trial must be in Redis as for a native job.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunecluster.client import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster
from tunecluster.cluster.redis_server import free_port
from tunecluster.store import Store
from tunecluster.store.results import FIELDS, _trial_row

from .conftest import EXAMPLES, FAST_LIVENESS, cli, run_job

pytestmark = [pytest.mark.e2e]
pytest.importorskip("ray.tune")

RAY = ("scheduler=ray",)
# One trial at a time (Ray's default here would be 2, one per CPU): on 2 cores, two fresh
# actors importing TensorFlow at once only slow each other down. The first test keeps
# the default, so trials also run side by side.
ONE = ("ray.max_concurrent_trials=1",)
SMALL = ("search.max_trials=3", "train.epochs=2")
# Ray's token authentication with a token of our own (not the user's ~/.ray/auth_token).
RAY_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
# The keys of a trial row in `results --json`, whatever the scheduler (the native e2e
# tests require at least NATIVE_TRIAL_KEYS).
TRIAL_KEYS = set(_trial_row({}))
NATIVE_TRIAL_KEYS = {"trial", "state", "hyperparameters", "score", "metrics", "attempts",
                     "worker", "error"}


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """One Ray head for the module (2 CPUs), stopped by killing what we started."""
    temp = tempfile.mkdtemp(prefix="ray-tc-", dir="/tmp")  # short: Ray's socket paths
    port = free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin), "start", "--head", "--block", "--num-cpus=2",
           "--node-ip-address=127.0.0.1",
           "--include-dashboard=false", "--disable-usage-stats", f"--port={port}",
           f"--ray-client-server-port={free_port()}", f"--temp-dir={temp}",
           f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    log = open(Path(temp) / "ray-start.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **RAY_AUTH, "TF_CPP_MIN_LOG_LEVEL": "2",
                                 "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
    address = f"127.0.0.1:{port}"
    import keras_tuner  # noqa: F401 - paid while Ray starts (prepare_job needs it)

    try:
        _wait_for_ray(address, proc, Path(temp) / "ray-start.log")
        yield address
    finally:
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait_s)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_ray(address: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    import socket

    host, port = address.split(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                time.sleep(2)  # the GCS listens before the raylet is up
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"Ray did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def ray_cluster(ray_address: str, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[LocalCluster]:
    """Redis + a chief that drives Ray jobs; no native worker (nothing else runs trials)."""
    base = tmp_path_factory.mktemp("ray-cluster")
    with LocalCluster(workers=0, artifacts=base / "artifacts", log_dir=base / "logs",
                      env={**FAST_LIVENESS, **RAY_AUTH, "RAY_ADDRESS": ray_address,
                           "TF_CPP_MIN_LOG_LEVEL": "2"}) as c:
        yield c


@pytest.fixture(scope="module")
def store(ray_cluster: LocalCluster) -> Store:
    return Store.from_url(ray_cluster.url)


def _check_like_native(results: dict, max_trials: int) -> None:
    for name in FIELDS:
        assert name in results, name
    assert results["state"] == "completed", results.get("error")
    assert results["scheduler"] == "ray"
    assert set(results["objective"]) == {"name", "direction"}
    assert set(results["best"]) == {"trial", "hyperparameters", "score", "metrics"}
    trials = results["trials"]
    assert 1 <= len(trials) <= max_trials
    assert len({t["trial"] for t in trials}) == len(trials), "a trial is listed twice"
    for t in trials:
        assert set(t) == TRIAL_KEYS and NATIVE_TRIAL_KEYS <= set(t), t
        assert t["state"] in ("COMPLETED", "FAILED"), t
        assert t["worker"].startswith("ray:"), t
        assert t["attempts"] >= 1
        if t["state"] == "COMPLETED":
            assert t["score"] is not None and t["epochs"] >= 1 and t["best_epoch"] >= 1, t
            assert results["objective"]["name"] in t["metrics"]
    assert Path(results["artifacts"]["best_model"]).is_file()
    assert Path(results["artifacts"]["results"]).is_file()
    assert results["test"] and "accuracy" in results["test"]


def _events(store: Store, job: str) -> list:
    return store.events.read(job, count=10000)


@pytest.mark.timeout(240)
def test_random_search_on_ray_gives_native_results(store, ray_cluster, tmp_path) -> None:
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (*RAY, *SMALL)))
    wait(store, job, 200)
    out = cli("results", job, "--json", "--redis", ray_cluster.url)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    _check_like_native(results, 3)
    assert len(results["trials"]) == 3
    assert results["best"]["score"] > 0.15  # 10 classes: chance is 0.1

    kinds = [e.type for e in _events(store, job)]
    for kind in ("job_submitted", "ray_run_started", "trial_created", "trial_started", "epoch",
                 "trial_completed"):
        assert kind in kinds, kind
    assert kinds.count("epoch") == sum(t["epochs"] for t in results["trials"])
    assert kinds.index("job_state") < kinds.index("trial_created")  # running before trials

    out = cli("status", job, "--json", "--redis", ray_cluster.url)
    assert out.returncode == 0, out.stderr
    export = tmp_path / "best.keras"
    out = cli("best", job, "--export", str(export), "--redis", ray_cluster.url)
    assert out.returncode == 0, out.stderr
    assert export.is_file()


@pytest.mark.timeout(240)
def test_bayesian_search_on_ray(store) -> None:
    results = run_job(store, EXAMPLES / "digits.yaml", *RAY, *SMALL,
                      "search.algorithm=bayesian", "search.num_initial_points=2", *ONE,
                      timeout_s=200)
    _check_like_native(results, 3)
    assert len(results["trials"]) == 3  # the third came from the Gaussian process


@pytest.mark.timeout(300)
def test_asha_stops_trials_early_and_they_end_completed(store) -> None:
    results = run_job(store, EXAMPLES / "digits.yaml", *RAY, "search.max_trials=6",
                      "train.epochs=4", "train.early_stopping=null",
                      "model.hyperparameters.learning_rate={float: [1.0e-5, 1.0e-2],"
                      " sampling: log}",
                      "ray.early_stopping={scheduler: asha, grace_period: 1}", *ONE,
                      timeout_s=260)
    _check_like_native(results, 6)
    job = results["job"]
    stopped = [t for t in results["trials"]
               if store.jobs.trial(job, t["trial"]).get("stopped_early") == "1"]
    assert stopped, "ASHA stopped no trial"
    for t in stopped:
        assert t["state"] == "COMPLETED" and t["score"] is not None
        assert t["epochs"] < 4  # the epochs it ran before ASHA stopped it
        assert store.jobs.trial(job, t["trial"])["stopped_by"] == "asha"
        model = Path(results["artifacts"]["dir"]) / "trials" / t["trial"] / "model.keras"
        assert model.is_file(), "a stopped trial keeps its best epoch's model"
    events = [e for e in _events(store, job) if e.type == "trial_stopped_early"]
    assert {e.data["trial"] for e in events} == {t["trial"] for t in stopped}


@pytest.mark.timeout(240)
def test_custom_module_job_on_ray(store) -> None:
    results = run_job(store, EXAMPLES / "custom.yaml", *RAY, "search.max_trials=2",
                      "train.epochs=2", *ONE, timeout_s=200)
    _check_like_native(results, 2)
    assert {"num_layers", "units_0", "lr"} <= set(results["best"]["hyperparameters"])


CRASH_ONCE = textwrap.dedent('''
    import os
    import keras

    MARK = {mark!r}
    SUBMITTER = {pid}


    def build_model(hp):
        units = hp.Int("units", 16, 32)
        # not in the submitter, nor in the child it runs the discovery of the space in
        submitting = SUBMITTER in (os.getpid(), os.getppid())
        if not submitting and not os.path.exists(MARK):
            open(MARK, "w").close()
            os._exit(3)  # the Ray actor dies, as on a segfault or an OOM kill
        model = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(units, "relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model
''')


@pytest.mark.timeout(240)
def test_a_trial_whose_ray_actor_dies_is_retried_and_recorded(store, tmp_path) -> None:
    module = tmp_path / "crash_once.py"
    module.write_text(CRASH_ONCE.format(mark=str(tmp_path / "crashed"), pid=os.getpid()))
    spec = tmp_path / "crash.yaml"
    spec.write_text(textwrap.dedent("""
        name: crash-once
        data: {dataset: digits}
        model: {module: crash_once.py}
        search: {algorithm: random, objective: val_accuracy, max_trials: 1,
                 max_retries_per_trial: 1}
        train: {epochs: 1}
        scheduler: ray
        ray: {max_concurrent_trials: 1}
    """))
    results = run_job(store, spec, timeout_s=200)
    assert results["state"] == "completed", results.get("error")
    (trial,) = results["trials"]
    assert trial["state"] == "COMPLETED" and trial["attempts"] == 2, trial
    retries = [e for e in _events(store, results["job"]) if e.type == "trial_retry"]
    assert len(retries) == 1 and "Ray actor lost" in retries[0].data["reason"]
    assert "actor died" in retries[0].data["reason"], retries[0].data


@pytest.mark.timeout(180)
def test_cancel_stops_the_ray_run(store, ray_cluster) -> None:
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                    (*RAY, "search.max_trials=20", "train.epochs=50",
                                     "train.early_stopping=null", *ONE)))
    deadline = time.monotonic() + 120
    while not any(e.type == "trial_started" for e in _events(store, job)):
        assert time.monotonic() < deadline, "no trial started"
        time.sleep(0.5)
    out = cli("cancel", job, "--redis", ray_cluster.url)
    assert out.returncode == 0, out.stderr
    started = time.monotonic()
    results = wait(store, job, 60)
    assert time.monotonic() - started < 30, "the Ray run did not stop promptly"
    assert results["state"] == "cancelled"
    assert all(t["state"] in ("COMPLETED", "FAILED", "CANCELLED") for t in results["trials"])
    assert any(t["state"] == "CANCELLED" for t in results["trials"])


def test_unknown_ray_early_stopping_scheduler_is_a_one_line_spec_error() -> None:
    out = cli("validate", str(EXAMPLES / "digits.yaml"), "--set", "scheduler=ray",
              "--set", "ray.early_stopping={scheduler: hyperband}")
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "ray.early_stopping.scheduler" in lines[0] and "asha, median" in lines[0]


# --- the trust model (issue 10, point 14) --------------------------------------------------


def test_a_job_cannot_choose_the_ray_address() -> None:
    """A submitter must not point the chief at a Ray server of their own (Ray's client
    protocol unpickles): the address is the operator's (RAY_ADDRESS, chief --ray-address)."""
    out = cli("validate", str(EXAMPLES / "digits.yaml"), "--no-build", "--set", "scheduler=ray",
              "--set", "ray.address=ray://attacker.example:10001")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("spec error: ray.address:"), lines[0]
    assert "RAY_ADDRESS" in lines[0] and "--ray-address" in lines[0]


def test_pickled_ray_hooks_carry_no_redis_password(tmp_path) -> None:
    """Tune pickles its searcher, callbacks and stopper (into Ray's object store in client
    mode, into the experiment directory always): no password inside; the process that
    unpickles them (the Ray head) takes it from its own environment."""
    import pickle

    import redis

    from tunecluster.ray.hooks import JobStopper, RecordsCallback
    from tunecluster.store import Keys

    password = "pw-" + secrets.token_hex(16)
    client = redis.Redis.from_url(f"redis://tc:{password}@redis.example:6379/3")
    store = Store(client, Keys("tc"))
    blobs = {"callback": pickle.dumps(RecordsCallback(store, "job-1")),
             "stopper": pickle.dumps(JobStopper(store, "job-1", "chief-a", 1))}
    for name, blob in blobs.items():
        assert password.encode() not in blob, name
        (tmp_path / name).write_bytes(blob)
    # Unpickled in this process: the credentials it already holds.
    kwargs = pickle.loads(blobs["stopper"]).store.client.connection_pool.connection_kwargs
    assert kwargs["password"] == password and kwargs["username"] == "tc"
    # Unpickled elsewhere (a Ray head): from TUNECLUSTER_REDIS_URL, or none at all.
    script = textwrap.dedent(f"""
        import json, pickle, sys
        hooks = [pickle.loads(open({str(tmp_path)!r} + "/" + n, "rb").read())
                 for n in ("callback", "stopper")]
        stores = [hooks[0].records.store, hooks[1].store]
        print(json.dumps([s.client.connection_pool.connection_kwargs.get("password")
                          for s in stores]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TUNECLUSTER_REDIS_URL"}
    for url, expected in ((f"redis://:head-side-{password}@redis:6379/0",
                           f"head-side-{password}"), (None, None)):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, env={**env, **({"TUNECLUSTER_REDIS_URL": url}
                                                         if url else {})})
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [expected, expected]


def test_kuberay_probe_sees_a_running_ray_head(ray_address: str) -> None:
    """The probes k8s/ray gives the Ray pods (the image has no wget, no dashboard)."""
    port = ray_address.rsplit(":", 1)[1]
    for role in ("head", "worker"):
        out = subprocess.run([sys.executable, "-m", "tunecluster.ray.probe", "--role", role,
                              "--gcs-port", port], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == "ok", (role, out.stderr)
    out = subprocess.run([sys.executable, "-m", "tunecluster.ray.probe", "--role", "head",
                          "--gcs-port", str(free_port())], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "GCS" in out.stderr, out.stderr
