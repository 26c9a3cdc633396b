"""A real Redis server started by tunecluster itself, on a free loopback port.

Used by ``tunecluster run`` (the embedded default), ``tunecluster up`` and by the tests.
``ReplicatedRedis`` is the high-availability set the Sentinel tests run: a primary, a
replica and three sentinels, reached with a ``redis+sentinel://`` URL.
The binary is ``$TUNECLUSTER_REDIS_SERVER``, else ``redis-server`` on PATH (``make
install`` puts one there on Debian/Ubuntu with apt).

A password (``new_password()``; the local clusters always set one) reaches the server in
a config file of mode 0600 in its data directory, never on its command line: ``ps``
shows every local user the command lines, and anyone who can write a job to this Redis
runs code as the cluster's user (uploaded model code). A server started again on the
same data directory without a password given keeps the one in that file.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

CANDIDATES = ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server")
CONF_NAME = "tunecluster-redis.conf"


def new_password() -> str:
    """A random password for a cluster's own Redis (URL-safe: it goes into redis:// URLs)."""
    return secrets.token_urlsafe(24)


def find_redis_server() -> str:
    explicit = os.environ.get("TUNECLUSTER_REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server") or next((c for c in CANDIDATES if os.path.exists(c)), None)
    if not found:
        raise FileNotFoundError(
            "no redis-server found: install one (apt-get install redis-server, brew install"
            " redis) or set TUNECLUSTER_REDIS_SERVER, or pass --redis URL of a running server")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``with RedisServer() as server: server.url`` — stopped and cleaned up on exit."""

    def __init__(self, port: int | None = None, *, appendonly: bool = False,
                 password: str | None = None, data_dir: str | Path | None = None,
                 extra: list[str] | None = None, replica_of: int | None = None) -> None:
        self.port = port or free_port()
        self.replica_of = replica_of  # the port of a primary on 127.0.0.1 to replicate
        self.appendonly = appendonly
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="tunecluster-redis-"))
        self.password = password if password is not None else _stored_password(self.data_dir)
        self.extra = extra or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def conf(self) -> Path:
        return self.data_dir / CONF_NAME

    def start(self) -> RedisServer:
        args = [find_redis_server()]
        conf = ""
        if self.password:  # masterauth too: any server of a replicated set may be a replica
            conf += f"requirepass {self.password}\nmasterauth {self.password}\n"
        if self.replica_of:
            conf += f"replicaof 127.0.0.1 {self.replica_of}\n"
        if conf:
            write_private(self.conf, conf)
            args.append(str(self.conf))  # redis-server takes its config file first
        args += ["--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "everysec", "--protected-mode", "yes", *self.extra]
        self.process = _spawn(args, self.port)
        return self

    def stop(self, kill: bool = False) -> None:
        _stop(self.process, kill)
        self.process = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _spawn(args: list[str], port: int) -> subprocess.Popen[bytes]:
    """Start a server and wait until it listens on ``port`` (10 s at most)."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    _stop(process, kill=True)
    raise RuntimeError(f"redis-server did not listen on port {port} within 10s")


def _stop(process: subprocess.Popen[bytes] | None, kill: bool) -> None:
    if process is not None and process.poll() is None:
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _stored_password(data_dir: Path) -> str | None:
    """The password of the server last started on ``data_dir``, if it had one."""
    try:
        lines = (data_dir / CONF_NAME).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(None, 1)[1].strip() for line in lines
                 if line.startswith("requirepass ")), None)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, from its first byte on."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class SentinelServer:
    """One Redis Sentinel on a free loopback port, monitoring the primary at
    ``127.0.0.1:primary_port`` as ``service``. Its config file (mode 0600: it holds the
    primary's password) is in its own directory: Sentinel rewrites it as it learns."""

    def __init__(self, primary_port: int, *, service: str = "tunecluster",
                 password: str | None = None, quorum: int = 2, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000, port: int | None = None) -> None:
        self.port = port or free_port()
        self.primary_port, self.service, self.password = primary_port, service, password
        self.quorum, self.down_after_ms = quorum, down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.data_dir = Path(tempfile.mkdtemp(prefix="tunecluster-sentinel-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelServer:
        s = self.service
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.data_dir}",
                 f"sentinel monitor {s} 127.0.0.1 {self.primary_port} {self.quorum}",
                 f"sentinel down-after-milliseconds {s} {self.down_after_ms}",
                 f"sentinel failover-timeout {s} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {s} 1"]
        if self.password:
            lines.append(f"sentinel auth-pass {s} {self.password}")
        conf = self.data_dir / "sentinel.conf"
        write_private(conf, "\n".join(lines) + "\n")
        self.process = _spawn([find_redis_server(), str(conf), "--sentinel"], self.port)
        return self

    def stop(self, kill: bool = False) -> None:
        _stop(self.process, kill)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def sentinel_url(ports: list[int], service: str, password: str | None = None,
                 db: int = 0) -> str:
    """The ``redis+sentinel://`` URL of ``service`` behind the sentinels on ``ports``."""
    auth = f":{password}@" if password else ""
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return f"redis+sentinel://{auth}{hosts}/{service}/{db}"


class ReplicatedRedis:
    """A primary (AOF), a replica of it and ``sentinels`` sentinels (quorum 2 of 3), all
    on loopback with one password; ``url`` reaches the primary through the sentinels.
    ``with ReplicatedRedis() as ha: ...``: every server is stopped and removed on exit."""

    def __init__(self, *, service: str = "tunecluster", sentinels: int = 3,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        self.service, self.password = service, new_password()
        # No wait before the first sync (Redis waits 5 s for more replicas by default).
        self.primary = RedisServer(appendonly=True, password=self.password,
                                   extra=["--repl-diskless-sync-delay", "0"])
        self.replica = RedisServer(appendonly=True, password=self.password,
                                   replica_of=self.primary.port)
        self.sentinels = [SentinelServer(self.primary.port, service=service,
                                         password=self.password, quorum=min(2, sentinels),
                                         down_after_ms=down_after_ms,
                                         failover_timeout_ms=failover_timeout_ms)
                          for _ in range(sentinels)]

    @property
    def url(self) -> str:
        return sentinel_url([s.port for s in self.sentinels], self.service, self.password)

    def start(self) -> ReplicatedRedis:
        try:
            for server in (self.primary, self.replica, *self.sentinels):
                server.start()
        except BaseException:
            self.close()
            raise
        return self

    def ready(self) -> bool:
        """Whether a failover could happen now, losing nothing written before: the
        replica is in sync and every sentinel knows it and the other sentinels (they find
        each other through the primary, in a few seconds)."""
        try:
            with redis.Redis(port=self.replica.port, password=self.password,
                             socket_timeout=1, decode_responses=True) as r:
                if r.info("replication").get("master_link_status") != "up":
                    return False
        except redis.RedisError:
            return False
        for s in self.sentinels:
            try:
                with redis.Redis(port=s.port, socket_timeout=1, decode_responses=True) as r:
                    state = r.sentinel_master(self.service)
            except redis.RedisError:
                return False
            if (int(state.get("num-slaves", 0)) < 1
                    or int(state.get("num-other-sentinels", 0)) < len(self.sentinels) - 1):
                return False
        return True

    def close(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.close()

    def __enter__(self) -> ReplicatedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
