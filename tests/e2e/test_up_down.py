"""`tunecluster up` / `down`: a local cluster in the background that `run`, `submit`,
`status` and the Python API use, started and stopped through the real CLI.

Also: the CLI (validate, run on a warm or an embedded cluster) and the chief never
import TensorFlow for a builtin job; the chief scores the test split in its
evaluation process, whose TensorFlow is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from tests.e2e.conftest import EXAMPLES, cli

from tunecluster.store.connection import redact

SMALL = ("--set", "search.max_trials=2", "--set", "train.epochs=1")
# A sitecustomize that records, at exit, whether the process imported TensorFlow.
PROBE = '''
import atexit, json, os, sys
def _record():
    out = os.environ.get("TC_TF_PROBE")
    if out:
        with open(os.path.join(out, f"{os.getpid()}.json"), "w") as f:
            json.dump({"argv": " ".join(sys.argv), "tensorflow": "tensorflow" in sys.modules}, f)
atexit.register(_record)
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """Every process whose ancestry leads to ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parents[int(entry)] = int(f.read().rsplit(b")", 1)[-1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == current]
        found += kids
        frontier += kids
    return found


def _maps_tensorflow(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "libtensorflow" in f.read()


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """An environment whose cluster record is private to the test (and no Redis URL)."""
    monkeypatch.delenv("TUNECLUSTER_REDIS_URL", raising=False)
    probe = tmp_path / "probe"
    probe.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PROBE)
    env = {"TUNECLUSTER_CLUSTER_FILE": str(tmp_path / "state" / "cluster.json"),
           "TC_TF_PROBE": str(probe),
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    yield env
    cli("down", env=env, timeout=60)  # whatever the test left up


def _probes(env: dict[str, str]) -> list[dict]:
    return [json.loads(p.read_text()) for p in Path(env["TC_TF_PROBE"]).glob("*.json")]


def test_up_run_submit_down(home: dict[str, str], tmp_path: Path) -> None:
    env = home
    up = cli("up", "--workers", "2", "--artifacts", str(tmp_path / "art"), "--json", env=env)
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    assert info["ready"] is True
    state = json.loads(Path(env["TUNECLUSTER_CLUSTER_FILE"]).read_text())
    # the password stays in the 0600 record; what up prints has it masked
    password = urlsplit(state["url"]).password
    assert password and password not in up.stdout + up.stderr
    assert info["url"] == redact(state["url"]) and len(state["worker_pids"]) == 2
    pids = [state["redis_pid"], state["chief_pid"], *state["worker_pids"]]
    assert all(_alive(p) for p in pids)

    # `status` shows it and reads its Redis (no --redis given).
    status = cli("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["local_cluster"]["url"] == redact(state["url"])
    assert password not in status.stdout + status.stderr
    assert shown["local_cluster"]["running"] == {"redis": True, "chief": True,
                                                 "workers": [True, True]}
    assert len(shown["workers"]) == 2

    # A job through `run`: the warm cluster's, not an embedded one.
    ran = cli("run", str(EXAMPLES / "digits.yaml"), *SMALL, "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    first = json.loads(ran.stdout)
    assert first["state"] == "completed" and "accuracy" in first["test"]
    assert first["artifacts"]["dir"].startswith(str(tmp_path / "art"))

    # A second one through `submit --wait`, and the Python API sees both.
    done = cli("submit", str(EXAMPLES / "digits.yaml"), *SMALL, "--wait", "--json", env=env)
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)
    assert second["state"] == "completed" and second["test"] is not None
    listing = subprocess.run(
        [sys.executable, "-c", "from tunecluster.api import Client;"
         " print(sorted(j.id for j in Client().jobs()))"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert listing.returncode == 0, listing.stderr
    assert sorted([first["job"], second["job"]]) == json.loads(listing.stdout.replace("'", '"'))

    # Neither CLI process imported TensorFlow; the chief has none mapped, while its
    # evaluation process (which scored both test splits) and the trial processes do.
    by_command = {p["argv"]: p["tensorflow"] for p in _probes(env)}
    runs = [tf for argv, tf in by_command.items() if " run " in f" {argv} "
            or " submit " in f" {argv} "]
    assert len(runs) == 2 and not any(runs), by_command
    assert not _maps_tensorflow(state["chief_pid"])
    assert any(_maps_tensorflow(p) for p in _descendants(state["chief_pid"]))
    workers_tf = [p for w in state["worker_pids"] for p in _descendants(w)
                  if _maps_tensorflow(p)]
    assert len(workers_tf) >= 2
    everything = pids + _descendants(state["chief_pid"]) + [
        p for w in state["worker_pids"] for p in _descendants(w)]

    # `up` again refuses; `down` stops every process and removes the record.
    again = cli("up", env=env)
    assert again.returncode == 1 and "already up" in again.stderr
    down = cli("down", env=env, timeout=60)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in everything):
        time.sleep(0.1)
    assert not [p for p in everything if _alive(p)]
    assert not Path(env["TUNECLUSTER_CLUSTER_FILE"]).exists()
    assert not Path(state["redis_dir"]).exists()
    gone = cli("down", env=env)
    assert gone.returncode == 1 and "no local cluster" in gone.stderr


def test_stale_record_is_removed_with_a_notice(home: dict[str, str], tmp_path: Path) -> None:
    path = Path(home["TUNECLUSTER_CLUSTER_FILE"])
    path.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({
        "url": "redis://127.0.0.1:1/0", "artifacts": str(tmp_path), "redis_pid": dead.pid,
        "redis_dir": str(tmp_path / "gone"), "chief_pid": dead.pid,
        "worker_pids": [dead.pid], "log_dir": str(tmp_path), "started": 0}))
    status = cli("validate", str(EXAMPLES / "digits.yaml"), env=home)
    assert status.returncode == 0
    listed = cli("list", "--json", "--redis", "redis://127.0.0.1:1/0", env=home)
    assert listed.returncode == 6  # an explicit URL wins (unreachable here: ExitCode.UNREACHABLE)
    assert path.exists()
    jobs = cli("list", env=home)
    notices = [line for line in jobs.stderr.splitlines() if "no longer running" in line]
    assert len(notices) == 1, jobs.stderr
    assert not path.exists()


def test_validate_and_embedded_run_never_import_tensorflow(home: dict[str, str],
                                                           tmp_path: Path) -> None:
    ok = cli("validate", str(EXAMPLES / "digits.yaml"), env=home)
    assert ok.returncode == 0, ok.stderr
    ran = cli("run", str(EXAMPLES / "digits.yaml"), *SMALL, "--artifacts",
              str(tmp_path / "art"), "--json", env=home)
    assert ran.returncode == 0, ran.stderr
    results = json.loads(ran.stdout)
    assert results["state"] == "completed" and "accuracy" in results["test"]
    probes = _probes(home)
    cli_side = [p for p in probes if " validate " in f" {p['argv']} "
                or " run " in f" {p['argv']} "]
    assert len(cli_side) == 2 and not any(p["tensorflow"] for p in cli_side), probes


# --- the local cluster's Redis takes no command without its password ---------------------


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _unauthenticated(port: int) -> bytes:
    """What the server at ``port`` answers a client that sends no password: the job a
    local user would write with redis-cli (an XADD) and a plain PING."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"*5\r\n$4\r\nXADD\r\n$8\r\ntc:inbox\r\n$1\r\n*\r\n$4\r\ntype\r\n$6\r\nsubmit\r\n"
                  b"*1\r\n$4\r\nPING\r\n")
        reply = b""
        while reply.count(b"\r\n") < 2:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply


def _recording_redis(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A redis-server that first writes the arguments it was started with (what `ps`
    shows until Redis retitles itself) to a file."""
    from tunecluster.cluster import find_redis_server

    argv = tmp_path / "redis-argv"
    wrapper = tmp_path / "redis-server-recording"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {argv}\n'
                       f'exec {find_redis_server()} "$@"\n')
    wrapper.chmod(0o755)
    return {"TUNECLUSTER_REDIS_SERVER": str(wrapper)}, argv


def _assert_guarded(redis_pid: int, role_pids: list[int], port: int, password: str,
                    argv: Path) -> None:
    assert len(password) >= 16
    assert argv.read_text().strip() and password not in argv.read_text()
    reply = _unauthenticated(port)
    assert reply.startswith(b"-NOAUTH") and reply.count(b"-NOAUTH") == 2, reply
    # No process's command line (what `ps` shows every user) holds the password.
    for pid in [redis_pid, *role_pids]:
        assert _cmdline(pid), pid
        assert password.encode() not in _cmdline(pid), (pid, _cmdline(pid))
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=30)
    assert ps.returncode == 0 and password not in ps.stdout
    # Redis listens on loopback only.
    assert b"127.0.0.1:" in _cmdline(redis_pid), _cmdline(redis_pid)


def test_up_redis_requires_its_password(home: dict[str, str], tmp_path: Path) -> None:
    """Another local user reaching the port of `up`'s Redis can run no command (its code
    upload would run as this user); the password is in a 0600 record only, on no
    command line; every command finds it through the record."""

    extra, argv = _recording_redis(tmp_path)
    home = {**home, **extra}
    up = cli("up", "--workers", "1", "--artifacts", str(tmp_path / "art"), "--json", env=home)
    assert up.returncode == 0, up.stderr
    record = Path(home["TUNECLUSTER_CLUSTER_FILE"])
    assert (record.stat().st_mode & 0o777) == 0o600
    assert (record.parent.stat().st_mode & 0o077) == 0
    state = json.loads(record.read_text())
    url = urlsplit(state["url"])
    assert url.hostname == "127.0.0.1" and url.password
    _assert_guarded(state["redis_pid"], [state["chief_pid"], *state["worker_pids"]],
                    int(url.port or 0), url.password, argv)

    # The CLI and the Python API find the cluster (and its password) through the record.
    sub = cli("submit", str(EXAMPLES / "digits.yaml"), *SMALL, env=home)
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.split()[-1]
    shown = cli("status", job, "--json", env=home)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["job"] == job
    status = cli("status", "--json", env=home)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["local_cluster"]["running"]["redis"] is True
    listing = subprocess.run(
        [sys.executable, "-c", "from tunecluster.api import Client;"
         " print(' '.join(j.id for j in Client().jobs()))"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **home})
    assert listing.returncode == 0, listing.stderr
    assert job in listing.stdout.split()
    down = cli("down", env=home, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not _alive(state["redis_pid"]) and not record.exists()


def test_embedded_run_redis_requires_its_password(home: dict[str, str],
                                                  tmp_path: Path) -> None:
    """The embedded cluster of `run` (no `up`): its Redis refuses a client without the
    password while the job runs, and no command line shows the password."""
    extra, recorded = _recording_redis(tmp_path)
    home = {**home, **extra}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunecluster", "run", str(EXAMPLES / "digits.yaml"),
         "--set", "search.max_trials=2", "--set", "train.epochs=1", "--workers", "1",
         "--artifacts", str(tmp_path / "art"), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **home})
    try:
        redis_pid, deadline = None, time.monotonic() + 60
        while redis_pid is None and time.monotonic() < deadline and proc.poll() is None:
            redis_pid = next((p for p in _descendants(proc.pid)
                              if b"redis-server" in _cmdline(p)), None)
            time.sleep(0.1)
        assert redis_pid is not None, proc.communicate(timeout=60)
        argv = recorded.read_text().splitlines()
        port = int(argv[argv.index("--port") + 1])
        conf = Path(next(a for a in argv if a.endswith(".conf")))
        assert (conf.stat().st_mode & 0o777) == 0o600
        assert (conf.parent.stat().st_mode & 0o077) == 0
        password = next(line.split()[1] for line in conf.read_text().splitlines()
                        if line.startswith("requirepass "))
        roles = [p for p in _descendants(proc.pid) if b"tunecluster" in _cmdline(p)]
        assert roles
        _assert_guarded(redis_pid, roles + [proc.pid], port, password, recorded)
        out, errors = proc.communicate(timeout=240)
        assert proc.returncode == 0, errors
        assert json.loads(out)["state"] == "completed"
        assert password not in errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
