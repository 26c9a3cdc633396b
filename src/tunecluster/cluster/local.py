"""The embedded default: a real Redis, a chief and N workers, all local processes.

``LocalCluster`` is what ``tunecluster run`` uses and what the end-to-end tests drive:
every role is a separate OS process started with the same CLI a deployment uses. Its
Redis has a random password; the roles get the URL in their environment
(``$TUNECLUSTER_REDIS_URL``), which only this user can read, not on their command lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tunecluster import defaults
from tunecluster.artifact_store import is_url
from tunecluster.cluster.redis_server import RedisServer, new_password


class LocalCluster:
    def __init__(self, workers: int = 2, artifacts: str | Path = "artifacts", *,
                 redis_url: str | None = None, appendonly: bool = False,
                 log_dir: str | Path | None = None, env: dict[str, str] | None = None,
                 slots: int = 1, redis_dir: str | Path | None = None) -> None:
        self.n_workers = workers
        # a directory, or an object store URL passed through to every role as it is
        self.artifacts: Path | str = artifacts if is_url(artifacts) else Path(artifacts).resolve()
        self.redis: RedisServer | None = None
        self._external_url = redis_url
        # redis_dir: Redis keeps its data (AOF) there and a later cluster started on the
        # same directory finds it again (the drop-in tuners' reattach); None: a temp dir
        self.redis_dir = Path(redis_dir) if redis_dir is not None else None
        self.appendonly = appendonly or redis_dir is not None
        self.log_dir = Path(log_dir) if log_dir else None
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        self.slots = slots
        self.chiefs: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        if self._external_url:
            return self._external_url
        assert self.redis is not None
        return self.redis.url

    def start(self) -> LocalCluster:
        if isinstance(self.artifacts, Path):
            self.artifacts.mkdir(parents=True, exist_ok=True)
        if self.redis_dir is not None:
            self.redis_dir.mkdir(parents=True, exist_ok=True)
        if not self._external_url:
            self.redis = RedisServer(appendonly=self.appendonly, data_dir=self.redis_dir,
                                     password=new_password()).start()
        self.start_chief()
        for _ in range(self.n_workers):
            self.start_worker()
        return self

    def _spawn(self, role: str, *args: str) -> subprocess.Popen[bytes]:
        out = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{role}-{len(self.chiefs) + len(self.workers)}.log", "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "tunecluster", role, "--artifacts", str(self.artifacts),
               *args]
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**self.env, defaults.REDIS_URL_ENV: self.url},
                                start_new_session=True)

    def start_chief(self) -> subprocess.Popen[bytes]:
        proc = self._spawn("chief")
        self.chiefs.append(proc)
        return proc

    def start_worker(self) -> subprocess.Popen[bytes]:
        proc = self._spawn("worker", "--slots", str(self.slots))
        self.workers.append(proc)
        return proc

    def stop(self, fast: bool = False) -> None:
        """SIGTERM every role and wait for it (a worker releases its running trials),
        SIGKILL what is left after 15 s. ``fast``: SIGKILL at once (the embedded
        cluster of ``run``, whose Redis goes too: nothing to hand over)."""
        if fast:
            for p in self.workers + self.chiefs:
                _kill_group(p)
            if self.redis is not None:
                self.redis.stop(kill=True)
                self.redis.close()
            return
        procs = [p for p in self.workers + self.chiefs if p.poll() is None]
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(p)
        for p in procs:
            _kill_group(p)  # trial children live in the same process group
        if self.redis is not None:
            self.redis.close()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group(p: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass
