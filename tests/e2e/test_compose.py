"""The real thing in containers: the project's image, built offline, run by the project's
docker-compose.yml (redis + chief + 2 workers), driven from the host's CLI.

tests/e2e/docker_env.sh makes the environment: a Docker engine (started here when root
with apt, and stopped again at the end), local base images made with debootstrap (no
registry needed), a wheelhouse, and `docker build --network none` of the Dockerfile.
Without an engine the tests are skipped with the reason. The stack runs as docs/deploy.md
tells an operator to run it: an env file made from .env.example with a password of its
own (there is no default), code upload left off. The first run on a fresh
machine takes minutes (apt, debootstrap, ~700 MB of wheels); later runs reuse the cache
in $TUNECLUSTER_CI_CACHE (default /var/cache/tunecluster-ci).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunecluster.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
DOCKER_ENV = Path(__file__).with_name("docker_env.sh")
BIN = Path(sys.executable).parent
TRIALS = 4
FINAL = ("COMPLETED", "FAILED")

pytestmark = [pytest.mark.docker, pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.timeout(2700)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def docker_env() -> Iterator[dict[str, str]]:
    if os.environ.get("TUNECLUSTER_SKIP_DOCKER"):
        pytest.skip("TUNECLUSTER_SKIP_DOCKER is set")
    t0 = time.monotonic()
    result = subprocess.run(["bash", str(DOCKER_ENV), "up"], stdout=subprocess.PIPE,
                            stderr=None, text=True, timeout=2400)
    info = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    try:
        if result.returncode == 3:
            pytest.skip(f"no Docker engine: {info.get('REASON', 'unknown')}")
        assert result.returncode == 0, f"docker_env.sh up failed (rc {result.returncode})"
        info["SETUP_S"] = f"{time.monotonic() - t0:.0f}"
        yield info
    finally:
        subprocess.run(["bash", str(DOCKER_ENV), "down"], timeout=120)


def env_file_like_the_docs(path: Path, **settings: str) -> dict[str, str]:
    """Run docs/deploy.md's own first steps (`cp .env.example .env`, the `sed` that sets
    a fresh password) next to a copy of .env.example, then apply the test's settings."""
    docs = (ROOT / "docs" / "deploy.md").read_text()
    block = docs.split("From nothing to a running, secured stack:", 1)[1]
    steps = block.split("```bash\n", 1)[1].splitlines()[:2]
    code = [step.split("  #", 1)[0].rstrip() for step in steps]  # the commands, not notes
    assert code[0].endswith("cp .env.example .env") and code[1].startswith("sed -i "), steps
    shutil.copy(ROOT / ".env.example", path.parent / ".env.example")
    subprocess.run(["bash", "-euc", "\n".join(steps)], cwd=path.parent, check=True,
                   timeout=30)
    values = dict(ln.split("=", 1) for ln in path.read_text().splitlines()
                  if ln and not ln.startswith("#"))
    assert re.fullmatch(r"[0-9a-f]{48}", values["TUNECLUSTER_REDIS_PASSWORD"]), values
    values.update(settings)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return values


class Stack:
    """One compose project of the project's docker-compose.yml."""

    def __init__(self, image: str, redis_image: str, env_file: Path) -> None:
        self.project = f"tce2e{secrets.token_hex(3)}"
        self.port = _free_port()
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "DOCKER_HOST")
        self.env = {k: v for k, v in os.environ.items() if k in keep}
        self.env_file = env_file
        self.settings = env_file_like_the_docs(
            env_file,
            TUNECLUSTER_IMAGE=image,
            REDIS_IMAGE=redis_image,
            TUNECLUSTER_REDIS_PORT=str(self.port),
            # Short leases: a killed worker's trial is reaped and retried within seconds.
            TUNECLUSTER_LEASE_S="6",
            TUNECLUSTER_HEARTBEAT_S="1.5",
            # the dashboard profile: its token, and a free host port for it
            TUNECLUSTER_DASHBOARD_TOKEN=secrets.token_hex(24),
            TUNECLUSTER_DASHBOARD_PORT=str(_free_port()),
        )
        self.password = self.settings["TUNECLUSTER_REDIS_PASSWORD"]
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def compose(self, *args: str, timeout: float = 300,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / "docker-compose"), "--project-directory", str(ROOT), "-f",
               str(ROOT / "docker-compose.yml"), "--env-file", str(self.env_file),
               "-p", self.project, *args]
        result = subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> rc {result.returncode}\n{result.stderr}"
                                 f"\n{self.logs()}")
        return result

    def logs(self) -> str:
        result = subprocess.run(
            [str(BIN / "docker-compose"), "--project-directory", str(ROOT), "-f",
             str(ROOT / "docker-compose.yml"), "--env-file", str(self.env_file),
             "-p", self.project, "logs", "--no-color", "--tail", "60"],
            capture_output=True, text=True, env=self.env, timeout=60)
        return result.stdout[-12000:]

    def cli(self, *args: str, timeout: float = 600) -> Any:
        """The host's tunecluster CLI against the stack's published Redis; --json output."""
        result = subprocess.run([str(BIN / "tunecluster"), *args, "--redis", self.url, "--json"],
                                capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        assert result.returncode == 0, f"tunecluster {args}: {result.stderr}\n{self.logs()}"
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def stack(docker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    s = Stack(docker_env["IMAGE"], docker_env["REDIS_IMAGE"],
              tmp_path_factory.mktemp("compose") / ".env")
    t0 = time.monotonic()
    try:
        # --wait: every service's health check (tunecluster health --role ...) passes.
        s.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "240", timeout=400)
        print(f"\n[e2e] setup {docker_env['SETUP_S']} s, stack healthy in"
              f" {time.monotonic() - t0:.0f} s ({s.project})")
        yield s
    finally:
        s.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False,
                  timeout=180)


def test_stack_is_up_with_a_chief_and_two_workers(stack: Stack) -> None:
    ps = stack.compose("ps", "--format", "json").stdout
    rows = [json.loads(ln) for ln in ps.splitlines() if ln.strip()]
    if len(rows) == 1 and isinstance(rows[0], list):  # older compose: one JSON array
        rows = rows[0]
    services = sorted(r["Service"] for r in rows)
    assert services == ["chief", "redis", "worker", "worker"]
    assert all(r.get("Health") == "healthy" for r in rows), rows
    # The tools profile: a one-off CLI container inside the stack's network.
    result = stack.compose("run", "--rm", "-T", "cli", "status", "--json", timeout=180)
    status = json.loads(result.stdout)
    assert len(status["workers"]) == 2 and status["chief"]
    # The containers run as the image's non-root user, and /artifacts is theirs; PID 1 is
    # the image's init process; the thread pools follow the service's CPUs; code upload
    # is off as the docs recommend.
    out = stack.compose("exec", "-T", "chief", "sh", "-c",
                        "id -u; stat -c %u /artifacts; cat /proc/1/comm;"
                        " echo $TF_NUM_INTRAOP_THREADS $TUNECLUSTER_ALLOW_CODE_UPLOAD").stdout
    assert out.split() == ["10001", "10001", "dumb-init", "1", "0"], out


def test_containers_run_hardened(stack: Stack) -> None:
    """docker-compose.yml's hardening, as the engine applied it: no capabilities, no
    privilege gain, a read-only root with a writable /tmp tmpfs, a memory limit; and the
    roles still work that way (the stack is healthy, the jobs below complete)."""
    ids = stack.compose("ps", "-q").stdout.split()
    assert len(ids) == 4
    inspected = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True,
                                          text=True, check=True, timeout=60).stdout)
    for c in inspected:
        name, host = c["Name"], c["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd"), name
        assert "no-new-privileges:true" in host["SecurityOpt"], name
        assert host["ReadonlyRootfs"] is True, name
        assert "/tmp" in host["Tmpfs"], name
        assert host["Memory"] > 0, name
    for service in ("chief", "worker", "redis"):
        out = stack.compose(
            "exec", "-T", service, "sh", "-c",
            "grep -E '^(CapEff|NoNewPrivs):' /proc/self/status | tr -s ' \t' ' ';"
            " touch /root-is-writable 2>/dev/null && echo root-writable;"
            " touch /tmp/ok && echo tmp-writable").stdout
        lines = [ln.strip() for ln in out.splitlines()]
        assert lines == ["CapEff: 0000000000000000", "NoNewPrivs: 1", "tmp-writable"], \
            (service, out)


def test_the_dashboard_service_serves_the_stack_behind_its_token(stack: Stack) -> None:
    """`docker compose --profile dashboard up -d dashboard`, as the README shows: the
    port is published on the host's loopback, every request needs the .env token, the
    Prometheus scrape (--open-metrics) does not, and the password never leaves it."""
    import urllib.error
    import urllib.request

    stack.compose("--profile", "dashboard", "up", "-d", "--no-build", "--wait",
                  "--wait-timeout", "120", "dashboard", timeout=200)
    base = f"http://127.0.0.1:{stack.settings['TUNECLUSTER_DASHBOARD_PORT']}"
    token = stack.settings["TUNECLUSTER_DASHBOARD_TOKEN"]

    def get(path: str, auth: bool = True) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if auth else {}
        request = urllib.request.Request(base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        assert get("/api/workers", auth=False)[0] == 401
        status, body = get("/api/workers")
        assert status == 200 and len(json.loads(body)) == 2, body
        status, body = get("/metrics", auth=False)
        assert status == 200 and "tunecluster_workers_live 2.0" in body, body[-2000:]
        assert stack.password not in get("/")[1] + get("/api/jobs")[1] + body
    finally:
        stack.compose("--profile", "dashboard", "rm", "-s", "-f", "dashboard", check=False)


def test_jobs_that_carry_code_are_refused_by_default(stack: Stack) -> None:
    """TUNECLUSTER_ALLOW_CODE_UPLOAD stays 0 unless the operator turns it on."""
    assert stack.settings["TUNECLUSTER_ALLOW_CODE_UPLOAD"] == "0"
    t0 = time.monotonic()
    # Submitted from the one-off cli container, as docs/deploy.md shows.
    done = stack.compose("run", "--rm", "-T", "cli", "submit", "/examples/custom.yaml", "--set",
                         "search.max_trials=1", "--set", "train.epochs=1", "--wait", "--json",
                         timeout=300, check=False)
    assert done.returncode == ExitCode.JOB_FAILED, done.stderr[-2000:]  # a failed job is no 0
    results = json.loads(done.stdout)
    print(f"\n[e2e] code job refused in {time.monotonic() - t0:.0f} s")
    assert results["state"] == "failed", results
    assert "ALLOW_CODE_UPLOAD" in results["trials"][0]["error"], results["trials"]


def test_digits_job_from_the_host_cli_completes_and_exports_the_best_model(
        stack: Stack, tmp_path: Path) -> None:
    t0 = time.monotonic()
    results = stack.cli("submit", "examples/digits.yaml", "--set",
                        f"search.max_trials={TRIALS}", "--set", "train.epochs=2", "--wait")
    print(f"\n[e2e] digits job: {time.monotonic() - t0:.0f} s")
    assert results["state"] == "completed", results
    assert len(results["trials"]) == TRIALS
    assert results["counts"].get("COMPLETED") == TRIALS, results["counts"]
    assert results["best"] and results["test"]
    # The model lives on the artifacts volume, which the host cannot read: the host's CLI
    # downloads what the chief published in Redis, byte for byte the volume's file.
    job = results["job"]
    model = tmp_path / "best.keras"
    best = stack.cli("best", job, "--export", str(model))
    assert best["best_model"] == f"/artifacts/{job}/best_model.keras"
    assert best["exported_from"] == "redis", best
    assert model.stat().st_size > 1000
    assert zipfile.is_zipfile(model) and "config.json" in zipfile.ZipFile(model).namelist()
    on_volume = stack.compose("exec", "-T", "chief", "sha256sum",
                              f"/artifacts/{job}/best_model.keras").stdout.split()[0]
    assert hashlib.sha256(model.read_bytes()).hexdigest() == on_volume
    rows = stack.cli("artifacts", job, "-o", str(tmp_path / "out"))
    assert [r["name"] for r in rows][:2] == ["results.json", "best_model.keras"]
    assert len(rows) == 2 + min(TRIALS, 3) and {r["from"] for r in rows} == {"redis"}
    # Every worker wrote to the shared volume, as the non-root user.
    listing = stack.compose("exec", "-T", "chief", "ls", f"/artifacts/{job}/trials").stdout
    assert len(listing.split()) == TRIALS
    # The same results through the cli container (docs/deploy.md).
    again = json.loads(stack.compose("run", "--rm", "-T", "cli", "results", job, "--json",
                                     timeout=180).stdout)
    assert again["best"] == results["best"]


def test_a_trial_trained_by_two_worker_containers(stack: Stack) -> None:
    """A gang: the two worker containers find each other on the project network (each
    advertises its own address there) and train one trial together."""
    results = stack.cli("submit", "examples/digits.yaml", "--set", "search.max_trials=1",
                        "--set", "train.epochs=2", "--set", "resources.workers_per_trial=2",
                        "--wait")
    assert results["state"] == "completed", results
    (trial,) = results["trials"]
    assert trial["state"] == "COMPLETED", trial
    hosts = [m["address"].rsplit(":", 1)[0] for m in trial["workers"]]
    assert len(set(hosts)) == 2 and not any(h.startswith("127.") for h in hosts), hosts
    assert len({m["worker"] for m in trial["workers"]}) == 2


def test_a_worker_killed_mid_trial_loses_no_trial(stack: Stack) -> None:
    from tunecluster.store import Store

    # Epochs slow enough (small batches, one step per call) that the kill lands while
    # the trial runs: a digits epoch at batch 32 takes a fraction of a second.
    submitted = stack.cli("submit", "examples/digits.yaml", "--set",
                          f"search.max_trials={TRIALS}", "--set", "train.epochs=12",
                          "--set", "train.batch_size=8", "--set", "train.steps_per_execution=1",
                          "--set", "train.early_stopping=null", "--set", "search.seed=11")
    job = submitted["job"]
    store = Store.from_url(stack.url)
    containers = stack.compose("ps", "-q", "worker").stdout.split()
    assert len(containers) == 2

    # Wait for a trial that has finished an epoch (so it has a checkpoint), then kill the
    # container of the worker that runs it: SIGKILL, no chance to release the lease.
    victim = trial = victim_worker = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        for row in store.jobs.trials(job):
            if row.get("state") == "RUNNING" and row.get("worker") and \
                    1 <= int(row.get("last_epoch") or 0) <= 6:  # well before its end
                victim_worker = row["worker"]  # <hostname = container id>-<pid>-<token>
                host = victim_worker.split("-")[0]
                victim = next((c for c in containers if c.startswith(host)), None)
                trial = row.get("trial")
                break
        time.sleep(0.2)
    assert victim, f"no running trial seen\n{stack.logs()}"
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True, timeout=60)
    t_kill = time.monotonic()

    deadline = time.monotonic() + 600
    while store.jobs.get(job).state not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job} did not end\n{stack.logs()}"
        time.sleep(1)
    print(f"\n[e2e] killed worker {victim[:12]} during {trial}; job ended"
          f" {time.monotonic() - t_kill:.0f} s later")

    results = stack.cli("results", job)
    assert results["state"] == "completed", results
    states = {t["trial"]: t["state"] for t in results["trials"]}
    assert len(states) == TRIALS, states  # none lost, none duplicated
    assert all(s in FINAL for s in states.values()), states
    killed = next(t for t in results["trials"] if t["trial"] == trial)
    detail = (f"killed trial: {json.dumps(killed)}\nerrors: "
              f"{store.client.lrange(store.keys.trial(job, trial) + ':errors', 0, -1)}"
              f"\n{stack.logs()}")
    # The chief reaped the dead worker's lease and the trial ran again on another worker
    # (the survivor, or the killed container restarted by its restart policy: same
    # hostname, new worker id), resuming from the checkpoint on the shared volume.
    assert killed["attempts"] >= 2, detail
    assert killed["worker"] and killed["worker"] != victim_worker, detail
    # Checkpoints are replaced atomically, so the retry always finds a readable one.
    assert killed["state"] == "COMPLETED", detail
    assert killed["resumed_from_epoch"] >= 1, detail


def test_redis_keeps_the_jobs_across_a_restart(stack: Stack) -> None:
    jobs = stack.cli("list")
    assert len(jobs) == 4  # submitted by the tests above (the gang's job included)
    # AOF persistence (appendonly yes on the redis-data volume).
    stack.compose("restart", "redis", timeout=120)
    deadline = time.monotonic() + 60
    while True:
        try:
            after = stack.cli("list", timeout=30)
            break
        except AssertionError:
            assert time.monotonic() < deadline
            time.sleep(1)
    assert {(j["job"], j["state"]) for j in after} == {(j["job"], j["state"]) for j in jobs}


def test_scaling_workers_with_compose(stack: Stack) -> None:
    """`docker compose up -d --scale worker=N --wait` (docs/deploy.md): one more worker,
    healthy and heartbeating."""
    t0 = time.monotonic()
    stack.compose("up", "-d", "--no-build", "--scale", "worker=3", "--wait", "--wait-timeout",
                  "240", timeout=400)
    print(f"\n[e2e] scaled to 3 workers in {time.monotonic() - t0:.0f} s")
    assert len(stack.compose("ps", "-q", "worker").stdout.split()) == 3
    deadline = time.monotonic() + 60
    while len(stack.cli("status")["workers"]) < 3:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(1)
