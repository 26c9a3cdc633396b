"""A local cluster that outlives the command that started it (``tunecluster up``/``down``).

``up`` starts Redis, a chief and N workers as detached processes (each in a session of
its own, so a terminal's Ctrl-C or closing it does not reach them) and records them in
a small state file, ``~/.tunecluster/cluster.json`` (``$TUNECLUSTER_CLUSTER_FILE``
elsewhere). ``run``, ``submit``, the other commands and ``tunecluster.api.Client()``
use its Redis when no URL is given (an explicit ``--redis`` or
``$TUNECLUSTER_REDIS_URL`` wins), so a job starts on warm workers at once. ``down``
stops every process ``up`` started (their trial and evaluation processes go with them)
and removes Redis's directory and the state file.

The cluster's Redis listens on loopback with a random password (anyone who can write a
job to it runs code as this user): the URL with the password is in the state file
(mode 0600, in a directory made 0700) and in the roles' environment, never on a command
line, which ``ps`` shows every local user.

A state file whose processes are gone (a reboot, a kill) is stale: the first reader
removes it and says so in one line on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunecluster import defaults
from tunecluster.cluster.redis_server import RedisServer, new_password, write_private
from tunecluster.errors import TuneclusterError

STATE_ENV = "TUNECLUSTER_CLUSTER_FILE"
STOP_GRACE_S = 10.0  # a worker releases its running trials on SIGTERM; then SIGKILL


class ClusterError(TuneclusterError, RuntimeError):
    """``up`` when one is up already, ``down`` when none is."""


def state_file() -> Path:
    """Where ``up`` records its cluster."""
    explicit = os.environ.get(STATE_ENV)
    return Path(explicit) if explicit else Path.home() / ".tunecluster" / "cluster.json"


@dataclass
class ClusterState:
    """What ``up`` started: enough for ``down`` to stop it and for clients to find it."""

    url: str
    artifacts: str
    redis_pid: int
    redis_dir: str
    chief_pid: int
    worker_pids: list[int]
    log_dir: str
    started: float = field(default_factory=time.time)

    @property
    def pids(self) -> list[int]:
        return [self.redis_pid, self.chief_pid, *self.worker_pids]

    def alive(self) -> bool:
        """Redis is there: the cluster answers (a dead worker or chief is its own
        matter; ``status`` shows which)."""
        return _running(self.redis_pid, "redis-server")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_state(path: Path | None = None) -> ClusterState | None:
    """The recorded cluster, or None (no file, or a file that is not ours)."""
    path = path or state_file()
    try:
        raw = json.loads(path.read_text())
        return ClusterState(**raw)
    except (OSError, ValueError, TypeError):
        return None


def current(notice: bool = True) -> ClusterState | None:
    """The running cluster of ``up``; a stale record is removed (with a one-line notice
    on stderr when ``notice``)."""
    path = state_file()
    if not path.exists():
        return None
    state = read_state(path)
    if state is not None and state.alive():
        return state
    if state is not None:  # roles left without their Redis (never a reused pid)
        _stop_pids(state.worker_pids + [state.chief_pid], state.url, grace_s=0)
        shutil.rmtree(state.redis_dir, ignore_errors=True)
    path.unlink(missing_ok=True)
    if notice:
        print(f"tunecluster: removed the record of a local cluster that is no longer"
              f" running ({path})", file=sys.stderr)
    return None


def current_url() -> str | None:
    """The Redis URL of the local cluster of ``tunecluster up``, if one is running."""
    state = current()
    return state.url if state is not None else None


def resolve_url(given: str | None) -> str:
    """The Redis URL a command uses: the one given (``--redis`` or its variable), else
    the local cluster of ``up`` when one runs, else the default URL."""
    from tunecluster import defaults

    return given or current_url() or defaults.REDIS_URL


def up(workers: int = 2, artifacts: str | Path = "artifacts", *, slots: int = 1,
       env: dict[str, str] | None = None) -> ClusterState:
    """Start Redis, a chief and ``workers`` workers in the background and record them."""
    from tunecluster.artifact_store import is_url

    running = current()
    if running is not None:
        raise ClusterError(f"a local cluster is already up at {running.url} (pids"
                           f" {', '.join(map(str, running.pids))}); `tunecluster down` first")
    path = state_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    root = str(artifacts) if is_url(artifacts) else str(Path(artifacts).resolve())
    if not is_url(root):
        Path(root).mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="logs-", dir=path.parent))
    redis = RedisServer(data_dir=tempfile.mkdtemp(prefix="redis-", dir=path.parent),
                        password=new_password()).start()
    assert redis.process is not None
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {}),
                defaults.REDIS_URL_ENV: redis.url}

    def spawn(log: str, role: str, *args: str) -> int:
        with open(log_dir / f"{log}.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tunecluster", role, "--artifacts", root, *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                start_new_session=True)
        return proc.pid

    chief = spawn("chief", "chief")
    pids = [spawn(f"worker-{i}", "worker", "--slots", str(slots)) for i in range(workers)]
    state = ClusterState(url=redis.url, artifacts=root, redis_pid=redis.process.pid,
                         redis_dir=str(redis.data_dir), chief_pid=chief, worker_pids=pids,
                         log_dir=str(log_dir))
    write_private(path, json.dumps(state.to_json(), indent=2))
    return state


def down() -> ClusterState:
    """Stop every process of the recorded cluster and remove its record."""
    path = state_file()
    state = read_state(path)
    if state is None:
        path.unlink(missing_ok=True)
        raise ClusterError(f"no local cluster is up (no {path})")
    _stop_pids(state.worker_pids + [state.chief_pid], state.url, grace_s=STOP_GRACE_S)
    _stop_pids([state.redis_pid], "redis-server", grace_s=STOP_GRACE_S)
    shutil.rmtree(state.redis_dir, ignore_errors=True)
    path.unlink(missing_ok=True)
    return state


def process_states(state: ClusterState) -> dict[str, Any]:
    """Which of the recorded processes still run (for ``status``)."""
    return {"redis": _running(state.redis_pid, "redis-server"),
            "chief": _running(state.chief_pid, state.url),
            "workers": [_running(p, state.url) for p in state.worker_pids]}


# --- processes -------------------------------------------------------------------------


def _running(pid: int, name: str) -> bool:
    """``pid`` runs and is what we started (its command line or, for a role, which gets
    its Redis URL there, its environment names ``name``), not a process that reused the
    number; a zombie does not count."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if name.encode() in f.read():
                return True
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{defaults.REDIS_URL_ENV}={name}\0".encode() in f.read()
    except (OSError, IndexError):
        if not Path("/proc").is_dir():  # no procfs (macOS): the pid alone
            try:
                os.kill(pid, 0)
                return True
            except OSError:
                return False
        return False


def _stop_pids(pids: list[int], name: str, grace_s: float) -> None:
    """SIGTERM each process's group (the process and its trial/evaluation children),
    then SIGKILL what is left after ``grace_s``. Only processes whose command line
    holds ``name`` (the cluster's Redis URL, ``redis-server``): a recorded pid that
    another process reuses is left alone."""
    live = [p for p in pids if _running(p, name)]
    for pid in live:
        _signal_group(pid, signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while grace_s > 0 and time.monotonic() < deadline and any(_running(p, "") for p in live):
        time.sleep(0.05)
    for pid in live:
        if _running(pid, ""):
            _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_running(p, "") for p in live):
        time.sleep(0.05)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # each role leads its own session and group
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
