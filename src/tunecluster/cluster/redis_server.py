"""A real Redis server started by tunecluster itself, on a free loopback port.

Used by ``tunecluster run`` (the embedded default) and by the tests. The binary is
``$TUNECLUSTER_REDIS_SERVER``, else ``redis-server`` on PATH (``make install`` puts one
there on Debian/Ubuntu with apt).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server")


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
        self.password = password
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="tunecluster-redis-"))
        self.extra = extra or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "everysec", "--protected-mode", "yes", *self.extra]
        if self.password:
            args += ["--requirepass", self.password]
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
