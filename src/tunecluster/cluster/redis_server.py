"""A real Redis server started by tunecluster itself, on a free loopback port.

Used by ``tunecluster run`` (the embedded default), ``tunecluster up`` and by the tests.
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
                 extra: list[str] | None = None) -> None:
        self.port = port or free_port()
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
        if self.password:
            write_private(self.conf, f"requirepass {self.password}\n")
            args.append(str(self.conf))  # redis-server takes its config file first
        args += ["--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "everysec", "--protected-mode", "yes", *self.extra]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on port {self.port} within 10s")

    def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


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
