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

from tunecluster.api.submission import prepare_job, submit, wait
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


# Ray 2.x on Linux replaces 127.0.0.1 with the machine's primary address (its sockets
# then listen there) unless this is in the environment of every Ray process: the head,
# the chief (a Ray driver) and whatever they start. Tests never talk beyond loopback.
RAY_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
RAY_ENV = {**RAY_AUTH, **RAY_LOOPBACK, "TF_CPP_MIN_LOG_LEVEL": "2"}
HEAD_ATTEMPTS = 3
HEAD_UP_S = 70.0  # each attempt: `ray start` writing its address, then a task completing
# (the attempts together stay within the first test's timeout)
CLIENT_BIND_S = 15.0  # after that task: the client server listening on its port
# A trivial task on the head, from a fresh driver: the head is up when this prints ok.
PING = "import sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR'); " \
       "print('ok' if ray.get(ray.remote(lambda: 1).options(num_cpus=0).remote()) == 1 " \
       "else 'bad')"


def _head_processes(proc: subprocess.Popen) -> list:
    """The processes of the Ray head started as ``proc``: its session (start_new_session),
    which every process `ray start --block` starts stays in."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == proc.pid:
                found.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def _kill_head(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the head's session at once, as a lost machine: Ray's
    workers (a trial's actor among them) too, which need not share the head's process
    group and would otherwise go on until they notice their raylet is gone."""
    import psutil

    for _ in range(2):  # the second sweep: what was being started during the first
        try:
            found = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            found = []
        for p in {*found, *_head_processes(proc)}:
            try:
                p.kill()
            except psutil.Error:
                continue
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def _stop_head(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait_s)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    _kill_head(proc)  # what `ray start` left behind


def _start_head(temp: Path, port: int = 0) -> tuple[subprocess.Popen, str]:
    """`ray start --head` on loopback; returns the process and the GCS address once a
    task has run there and its client server listens. Ray picks its ports itself (GCS
    unless ``port``, agents, metrics), all but the client server's, which has no "any free
    port" (0 is refused): that one is picked here, and a head that exits or does not bind
    it (taken meanwhile) is started again."""
    ray_bin = Path(sys.executable).with_name("ray")
    tail = ""
    for attempt in range(1, HEAD_ATTEMPTS + 1):
        session = temp / f"ray{attempt}"  # short: Ray's socket paths
        session.mkdir()
        client_port = free_port()
        cmd = [str(ray_bin), "start", "--head", "--block", "--num-cpus=2",
               "--node-ip-address=127.0.0.1", f"--port={port}",
               "--include-dashboard=false", "--disable-usage-stats",
               f"--ray-client-server-port={client_port}",
               "--dashboard-agent-listen-port=0", f"--temp-dir={session}"]
        log_path = session / "ray-start.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True,
                                    env={**os.environ, **RAY_ENV,
                                         "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
        address = _wait_for_head(proc, session, log_path, client_port)
        if address:
            return proc, address
        _stop_head(proc)
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        tail = lines[-1] if lines else "no output"
    pytest.fail(f"the Ray head did not start in {HEAD_ATTEMPTS} attempts; last: {tail}",
                pytrace=False)


def _listening_ports(proc: subprocess.Popen) -> set[int]:
    import psutil

    ports = set()
    for p in _head_processes(proc):
        try:
            ports |= {c.laddr.port for c in p.net_connections("inet")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue  # gone meanwhile
    return ports


def _wait_for_head(proc: subprocess.Popen, session: Path, log: Path,
                   client_port: int) -> str | None:
    """The head's GCS address once a trivial task completes there and the head listens
    on ``client_port``; None when `ray start` exits or that takes over HEAD_UP_S."""
    deadline = time.monotonic() + HEAD_UP_S
    address_file = session / "ray_current_cluster"  # written once the head has started
    while not address_file.is_file() or not address_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.5)
    address = address_file.read_text().strip()
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            ping = subprocess.run([sys.executable, "-c", PING, address], capture_output=True,
                                  text=True, timeout=max(5.0, deadline - time.monotonic()),
                                  env={**os.environ, **RAY_ENV})
        except subprocess.TimeoutExpired:
            return None
        if ping.returncode == 0 and ping.stdout.strip().endswith("ok"):
            break
        time.sleep(1)
    # The client server binds its port by now, or never does (taken meanwhile: the head
    # does not exit for that).
    deadline = min(deadline, time.monotonic() + CLIENT_BIND_S)
    while proc.poll() is None and time.monotonic() < deadline:
        if client_port in _listening_ports(proc):
            return address
        time.sleep(0.5)
    return None


@pytest.fixture(scope="module")
def ray_head() -> Iterator[tuple[subprocess.Popen, str]]:
    """One Ray head for the module (2 CPUs, loopback only), stopped by killing what we
    started. A head that cannot start fails every test of the module in one line."""
    temp = Path(tempfile.mkdtemp(prefix="ray-tc-", dir="/tmp"))  # short: socket paths
    import keras_tuner  # noqa: F401 - paid while Ray starts (prepare_job needs it)

    try:
        proc, address = _start_head(temp)
        try:
            yield proc, address
        finally:
            _stop_head(proc)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_address(ray_head: tuple[subprocess.Popen, str]) -> str:
    return ray_head[1]


@pytest.fixture(scope="module")
def ray_cluster(ray_address: str, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[LocalCluster]:
    """Redis + a chief that drives Ray jobs; no native worker (nothing else runs trials)."""
    base = tmp_path_factory.mktemp("ray-cluster")
    with LocalCluster(workers=0, artifacts=base / "artifacts", log_dir=base / "logs",
                      env={**FAST_LIVENESS, **RAY_ENV, "RAY_ADDRESS": ray_address}) as c:
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


def _wait_for_event(store: Store, job: str, kind: str, within_s: float = 120) -> None:
    """Until the job's stream holds an event of ``kind`` (a trial started, an epoch)."""
    deadline = time.monotonic() + within_s
    while not any(e.type == kind for e in _events(store, job)):
        assert time.monotonic() < deadline, f"no {kind} event within {within_s:g} s"
        time.sleep(0.5)


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
    # A grid whose first trial learns (adam at 1e-2) and whose next five barely move
    # (1e-6): each of those ends its first rung below the 75th percentile of the rung's
    # scores, so ASHA must stop them whatever the run's noise (a random space could
    # draw its trials in rising order and stop none: it did, once in CI).
    results = run_job(store, EXAMPLES / "digits.yaml", *RAY, "search.algorithm=grid",
                      "search.max_trials=6", "train.epochs=4", "train.early_stopping=null",
                      "model.hyperparameters.n_hidden={choice: [1]}",
                      "model.hyperparameters.n_neurons={choice: [32]}",
                      "model.hyperparameters.optimizer={choice: [adam]}",
                      "model.hyperparameters.learning_rate={choice: [1.0e-2, 1.0e-6,"
                      " 2.0e-6, 3.0e-6, 4.0e-6, 5.0e-6]}",
                      "ray.early_stopping={scheduler: asha, grace_period: 1}", *ONE,
                      timeout_s=260)
    _check_like_native(results, 6)
    job = results["job"]
    stopped = [t for t in results["trials"]
               if store.jobs.trial(job, t["trial"]).get("stopped_early") == "1"]
    learns = [t for t in results["trials"]
              if t["hyperparameters"]["learning_rate"] == pytest.approx(1.0e-2)]
    assert len(learns) == 1 and learns[0] not in stopped and learns[0]["epochs"] == 4
    assert len(stopped) >= 4, f"ASHA stopped {len(stopped)} of the 5 trials that barely learn"
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
    _wait_for_event(store, job, "trial_started")
    out = cli("cancel", job, "--redis", ray_cluster.url)
    assert out.returncode == 0, out.stderr
    started = time.monotonic()
    results = wait(store, job, 60)
    assert time.monotonic() - started < 30, "the Ray run did not stop promptly"
    assert results["state"] == "cancelled"
    assert all(t["state"] in ("COMPLETED", "FAILED", "CANCELLED") for t in results["trials"])
    assert any(t["state"] == "CANCELLED" for t in results["trials"])



# --- fencing: a deposed chief writes nothing (issue 23, point 3) ---------------------------


def _snapshot(store: Store) -> dict:
    """Every key's content (not DUMP: Redis may re-encode a hash that was only read)."""
    r, out = store.client, {}
    read = {"hash": r.hgetall, "stream": lambda k: r.xrange(k), "list": lambda k: r.lrange(
        k, 0, -1), "zset": lambda k: r.zrange(k, 0, -1, withscores=True), "set": r.smembers}
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        out[key] = (kind, read[kind](key) if kind in read else r.dump(key))
    return out


def test_a_deposed_chief_writes_no_ray_job_state(tmp_path: Path) -> None:
    """The job-state writes of a Ray job (queued -> running by the chief's loader, the
    take-over of a run, the finalize of a job found finalizing) are under the chief's
    fence: with the lock held by another chief, each is refused and nothing is written."""
    from tunecluster.chief.jobs import load_job
    from tunecluster.cluster.redis_server import RedisServer
    from tunecluster.ray.backend import RayJobRunner
    from tunecluster.spec import parse_spec
    from tunecluster.store.fence import Fence, LostLeadership

    with RedisServer() as server:
        store = Store.from_url(server.url)
        queued = submit(store, prepare_job(EXAMPLES / "digits.yaml", (*RAY, *SMALL)))
        store.client.set(store.keys.chief_lock, "chief-b")  # another chief leads
        stale = Fence(store.keys.chief_lock, "chief-a")
        before = _snapshot(store)
        with pytest.raises(LostLeadership):  # the chief's one loader, for Ray jobs too
            load_job(store, queued, stale)
        with pytest.raises(LostLeadership):
            RayJobRunner(store, queued, parse_spec(store.jobs.get(queued).spec), {}, tmp_path,
                         chief_id="chief-a", fence=stale).records.take_over(
                queued, "chief-a", fence=stale)
        assert _snapshot(store) == before
        assert store.jobs.get(queued).state == "queued"

        store.client.delete(store.keys.chief_lock)
        store.jobs.set_state(queued, "finalizing")  # as a chief that died finalizing left it
        store.client.set(store.keys.chief_lock, "chief-b")
        before = _snapshot(store)
        record = store.jobs.get(queued)
        runner = RayJobRunner(store, queued, parse_spec(record.spec), record.space, tmp_path,
                              chief_id="chief-a", fence=stale)
        with pytest.raises(LostLeadership):
            runner.run()
        assert _snapshot(store) == before
        assert store.jobs.get(queued).state == "finalizing"


@pytest.mark.timeout(240)
def test_a_deposed_chief_stops_its_ray_run_and_writes_nothing(store, ray_cluster) -> None:
    """The lock taken from the chief while its Ray job runs: the chief stands by, its Ray
    run stops (no more writes at all), the job's state and record are left as they were;
    given the lock back, the chief starts a new Ray run of the job."""
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml",
                                    (*RAY, "search.max_trials=20", "train.epochs=50",
                                     "train.early_stopping=null", *ONE)))
    _wait_for_event(store, job, "epoch")
    store.client.set(store.keys.chief_lock, "usurper", px=120_000)
    deposed = len(_events(store, job))
    # The Ray run stops: the event stream stays still for 5 s within 40 s.
    deadline, count, still_since = time.monotonic() + 40, -1, time.monotonic()
    while time.monotonic() - still_since < 5:
        assert time.monotonic() < deadline, "the deposed chief's Ray run goes on writing"
        now = len(_events(store, job))
        if now != count:
            count, still_since = now, time.monotonic()
        time.sleep(0.5)
    after = _events(store, job)[deposed:]
    assert not [e for e in after if e.type in ("job_state", "ray_run_started")], after
    assert not [e for e in after if e.type == "epoch"][1:], "epochs went on after deposal"
    fields = store.jobs.get(job).fields
    assert fields["state"] == "running" and not fields.get("final"), fields
    assert ray_cluster.log_dir is not None
    log_text = "".join(f.read_text(errors="replace") for f in ray_cluster.log_dir.glob("chief*"))
    assert "standing by" in log_text

    runs = int(fields["ray_run"])
    store.client.delete(store.keys.chief_lock)  # the chief leads again: a new Ray run
    deadline = time.monotonic() + 60
    while int(store.client.hget(store.keys.job(job), "ray_run") or 0) <= runs:
        assert time.monotonic() < deadline, "the chief did not resume the job"
        time.sleep(0.5)
    assert cli("cancel", job, "--redis", ray_cluster.url).returncode == 0
    assert wait(store, job, 90)["state"] == "cancelled"


# --- the Ray head lost (issue 31, point 2) ------------------------------------------------


@pytest.fixture
def own_head_cluster(tmp_path: Path, request: pytest.FixtureRequest
                     ) -> Iterator[tuple[LocalCluster, Store, str]]:
    """A cluster whose chief drives Ray at a fixed loopback address where no Ray runs
    yet; the test starts (and kills) heads there. ``request.param``: extra chief env."""
    address = f"127.0.0.1:{free_port()}"
    env = {**FAST_LIVENESS, **RAY_ENV, "RAY_ADDRESS": address,
           **getattr(request, "param", {})}
    with LocalCluster(workers=0, artifacts=tmp_path / "artifacts", log_dir=tmp_path / "logs",
                      env=env) as c:
        yield c, Store.from_url(c.url), address


def _wait_for_waiting(store: Store, job: str, address: str, within_s: float) -> str:
    deadline = time.monotonic() + within_s
    while True:
        record = store.jobs.get(job)
        line = record.fields.get("waiting") or ""
        if line:
            assert line.startswith(f"Ray at {address} unreachable since "), line
            assert record.state == "running", record.state
            return line
        assert time.monotonic() < deadline, f"the job says nothing ({record.state})"
        time.sleep(0.5)


# A model whose trials wait at the end of their first epoch while HOLD exists (120 s at
# most): the test kills the Ray head while a trial is surely mid-run, not between trials.
HOLD_MODULE = textwrap.dedent('''
    import os
    import time

    import keras

    HOLD = {hold!r}


    def build_model(hp):
        model = keras.Sequential([keras.Input(shape=(8, 8)), keras.layers.Flatten(),
                                  keras.layers.Dense(hp.Int("units", 16, 32), "relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model


    class Hold(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            deadline = time.monotonic() + 120
            while os.path.exists(HOLD) and time.monotonic() < deadline:
                time.sleep(0.2)


    def fit(hp, model, *args, callbacks=(), **kwargs):
        return model.fit(*args, callbacks=[*callbacks, Hold()], **kwargs)
''')


@pytest.mark.timeout(420)
def test_ray_head_lost_mid_job_the_job_waits_then_completes_on_a_new_head(
        own_head_cluster, tmp_path: Path) -> None:
    cluster, store, address = own_head_cluster
    hold = tmp_path / "hold"
    hold.touch()
    (tmp_path / "hold_model.py").write_text(HOLD_MODULE.format(hold=str(hold)))
    spec = tmp_path / "hold.yaml"
    spec.write_text(textwrap.dedent("""
        name: head-lost
        data: {dataset: digits}
        model: {module: hold_model.py, fit: fit}
        search: {algorithm: random, objective: val_accuracy, max_trials: 2,
                 max_retries_per_trial: 1}
        train: {epochs: 2}
        scheduler: ray
        ray: {max_concurrent_trials: 1}
    """))
    temp = Path(tempfile.mkdtemp(prefix="ray-hl-", dir="/tmp"))  # short: socket paths
    port = int(address.rsplit(":", 1)[1])
    (temp / "a").mkdir()
    head, _ = _start_head(temp / "a", port)
    try:
        job = submit(store, prepare_job(spec, ()))
        _wait_for_event(store, job, "epoch", 150)  # the first trial now holds in epoch 1
        (held,) = [e.data["trial"] for e in _events(store, job) if e.type == "trial_started"]
        _kill_head(head)  # the Ray head dies, with the trial's actor
        hold.unlink()
        line = _wait_for_waiting(store, job, address, 30)
        out = cli("status", job, "--redis", cluster.url)
        assert out.returncode == 0, out.stderr
        assert f"waiting: {line}" in " ".join(out.stdout.split()), out.stdout
        time.sleep(3)  # still waiting, still running: nothing failed the job meanwhile
        assert store.jobs.get(job).state == "running"

        (temp / "b").mkdir()
        head, _ = _start_head(temp / "b", port)  # Ray is back at the same address
        results = wait(store, job, 240)
        assert results["state"] == "completed", results.get("error")
        assert not store.jobs.get(job).fields.get("waiting")
        runs = [e for e in _events(store, job) if e.type == "ray_run_started"]
        assert len(runs) >= 2, runs  # a run started as the new head came up may fail
        # The held trial ran again in the new run (its second attempt); the other once.
        attempts = {t["trial"]: (t["state"], t["attempts"]) for t in results["trials"]}
        assert attempts.pop(held) == ("COMPLETED", 2), results["trials"]
        assert list(attempts.values()) == [("COMPLETED", 1)], results["trials"]
        retries = [e.data for e in _events(store, job) if e.type == "trial_retry"]
        assert [r["trial"] for r in retries] == [held], retries
    finally:
        hold.unlink(missing_ok=True)
        _stop_head(head)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("own_head_cluster", [{"TUNECLUSTER_RAY_UNREACHABLE_S": "4"}],
                         indirect=True)
def test_ray_unreachable_past_the_limit_fails_the_job_with_the_reason(own_head_cluster
                                                                      ) -> None:
    cluster, store, address = own_head_cluster  # no Ray head there at all
    job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (*RAY, *SMALL)))
    line = _wait_for_waiting(store, job, address, 60)
    results = wait(store, job, 90)
    assert results["state"] == "failed"
    error = results["error"]
    assert len(error.splitlines()) == 1, error
    assert error.startswith(line) and "TUNECLUSTER_RAY_UNREACHABLE_S" in error, error
    out = cli("status", job, "--redis", cluster.url)
    assert out.returncode == 0 and "unreachable since" in out.stdout, out.stdout

@pytest.mark.timeout(180)
def test_a_wrong_ray_token_fails_the_job_soon_and_says_why(ray_address: str,
                                                           tmp_path: Path) -> None:
    """The module's head (token authentication) and a chief with another token: Ray
    retries (20 s, 3 here) and raises "Failed to connect"; the job must not wait the 600 s
    of an unreachable cluster, and its error says the token was refused."""
    env = {**FAST_LIVENESS, **RAY_ENV, "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_ADDRESS": ray_address, "TUNECLUSTER_RAY_REFUSED_S": "0",
           "RAY_gcs_server_port_wait_time_s": "3"}  # Ray's tries at its GCS (20 s)
    with LocalCluster(workers=0, artifacts=tmp_path / "artifacts", log_dir=tmp_path / "logs",
                      env=env) as cluster:
        store = Store.from_url(cluster.url)
        job = submit(store, prepare_job(EXAMPLES / "digits.yaml", (*RAY, *SMALL)))
        results = wait(store, job, 120)
        out = cli("status", job, "--redis", cluster.url)
    assert results["state"] == "failed"
    error = results["error"]
    assert len(error.splitlines()) == 1, error
    assert error.startswith(f"Ray at {ray_address} refuses this chief since "), error
    assert "does not accept this chief's Ray token (" in error, error
    assert "RAY_AUTH_TOKEN" in error and "(TUNECLUSTER_RAY_REFUSED_S)" in error, error
    assert not results["trials"], results["trials"]
    assert out.returncode == 0 and "refuses this chief" in out.stdout, out.stdout


def test_unknown_ray_early_stopping_scheduler_is_a_one_line_spec_error() -> None:
    out = cli("validate", str(EXAMPLES / "digits.yaml"), "--set", "scheduler=ray",
              "--set", "ray.early_stopping={scheduler: hyperband}")
    assert out.returncode == 2  # a spec error (README, "Exit status")
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


def test_the_ray_head_listens_on_loopback_only(ray_head: tuple[subprocess.Popen, str]) -> None:
    """Every listening socket of the head's processes (GCS, raylet, agents, client server,
    workers) is on 127.0.0.1 or ::1: nothing of the suite's Ray is reachable from outside.
    """
    import ipaddress

    import psutil

    proc, address = ray_head
    assert address.startswith("127.0.0.1:"), address
    listening: dict[str, list[str]] = {}
    for p in _head_processes(proc):
        try:
            conns = p.net_connections("inet")
            name = f"{p.pid}:{p.name()}"
        except psutil.Error:
            continue  # gone meanwhile (a worker process)
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                listening.setdefault(name, []).append(f"{c.laddr.ip}:{c.laddr.port}")
    assert any("gcs_server" in n for n in listening), listening
    assert any("raylet" in n for n in listening), listening

    def loopback(ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        mapped = getattr(addr, "ipv4_mapped", None)
        return (mapped or addr).is_loopback

    outside = {n: [a for a in addrs if not loopback(a.rsplit(":", 1)[0])]
               for n, addrs in listening.items()}
    assert not any(outside.values()), {n: a for n, a in outside.items() if a}


LOCAL_RAY_LISTENS = textwrap.dedent("""
    import json, psutil
    from tunecluster.ray.connect import connect_ray
    assert connect_ray(None) == "local"
    import ray
    me = psutil.Process()
    listening = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            for c in p.net_connections("inet"):
                if c.status == psutil.CONN_LISTEN:
                    listening.setdefault(f"{p.pid}:{p.name()}", []).append(c.laddr.ip)
        except psutil.Error:
            pass
    ray.shutdown()
    print(json.dumps(listening))
""")


@pytest.mark.timeout(180)
def test_a_local_ray_the_chief_starts_listens_on_loopback_only(tmp_path: Path) -> None:
    """The on-demand Ray of a chief without RAY_ADDRESS: tunecluster itself keeps it on
    loopback (the test's environment does not: the variable is removed here)."""
    import ipaddress

    temp = Path(tempfile.mkdtemp(prefix="ray-od-", dir="/tmp"))  # short: socket paths
    env = {k: v for k, v in os.environ.items()
           if k not in (*RAY_LOOPBACK, "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    try:
        out = subprocess.run([sys.executable, "-c", LOCAL_RAY_LISTENS], capture_output=True,
                             text=True, timeout=150,
                             env={**env, "RAY_TMPDIR": str(temp), "TF_CPP_MIN_LOG_LEVEL": "2",
                                  "TUNECLUSTER_RAY_NUM_CPUS": "1"})
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    listening = json.loads(out.stdout.strip().splitlines()[-1])
    assert any("gcs_server" in n for n in listening), listening

    def loopback(ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback

    outside = {n: [ip for ip in ips if not loopback(ip)] for n, ips in listening.items()}
    assert not any(outside.values()), {n: ips for n, ips in outside.items() if ips}


def test_only_a_local_ray_is_kept_on_loopback() -> None:
    from tunecluster.ray.connect import is_local

    for address in (None, "", "127.0.0.1:6379", "localhost:6379", "[::1]:6379",
                    "ray://127.0.0.1:10001"):
        assert is_local(address), address
    for address in ("auto", "10.0.0.5:6379", "ray://tunecluster-ray-head-svc:10001"):
        assert not is_local(address), address


def test_a_stores_settings_pickle_with_the_roles_retry() -> None:
    """Tune pickles the searcher's and the callbacks' Store settings, the client's retry
    among them (which holds a lock and an event): they pickle, and come back fresh."""
    import pickle

    from ray import cloudpickle

    from tunecluster.store.connection import connect
    from tunecluster.store.portable import store_state

    client = connect("redis://:not-sent@127.0.0.1:9/0", check=False)
    store = type("S", (), {"client": client, "keys": type("K", (), {"p": "tc"})()})()
    state = pickle.loads(cloudpickle.dumps(store_state(store)))
    retry = state["kwargs"]["retry"]
    assert not retry.watch.stopped.is_set() and "not-sent" not in retry.watch.url
