"""The dashboard's security edges, end to end: the real server (uvicorn, over HTTP) on a
real Redis with a password, the real CLI in child processes, and a real browser.

No chief and no workers: the job whose charts carry hostile names is written through the
store's own worker protocol (enqueue, claim, report, finish), so nothing trains.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tunecluster.cluster import RedisServer
from tunecluster.dashboard.server import start_in_background
from tunecluster.store import Store

pytestmark = pytest.mark.e2e

PASSWORD = "dash-sec-" + secrets.token_hex(12)
TOKEN = "token-" + secrets.token_hex(16)
ACTION = {"X-Tunecluster": "1"}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def store(redis_server: RedisServer) -> Store:
    return Store.from_url(redis_server.url)


@pytest.fixture(scope="module")
def dashboard(redis_server: RedisServer) -> Iterator[str]:
    """The dashboard on loopback without a token (as `tunecluster dashboard`)."""
    url, stop = start_in_background(redis_server.url)
    yield url
    stop()


@pytest.fixture(scope="module")
def guarded(redis_server: RedisServer) -> Iterator[str]:
    """The dashboard with a token."""
    url, stop = start_in_background(redis_server.url, token=TOKEN)
    yield url
    stop()


def one_line_error(response: httpx.Response) -> str:
    message = response.json()["error"]
    assert "\n" not in message and PASSWORD not in response.text
    return message


# --- 1. the dashboard never runs submitted code --------------------------------------------

SOURCE_MODEL = """\
model:
  function: build_model
  source: |
    import pathlib
    pathlib.Path({marker!r}).write_text("ran at import")
    def build_model(hp):
        pathlib.Path({marker!r}).write_text("ran in build_model")
        import keras
        return keras.Sequential([keras.layers.Dense(hp.Int("units", 2, 4))])
"""


def _with_model(model_yaml: str) -> str:
    """A small job on the digits whose model section is ``model_yaml``."""
    return ("name: dash-code\ndata: {dataset: digits}\n" + model_yaml
            + "search: {objective: val_accuracy, max_trials: 1}\ntrain: {epochs: 1}\n")


@pytest.mark.parametrize("field,model_yaml", [
    ("model.source", SOURCE_MODEL),
    ("model.module", "model:\n  module: {marker!r}\n  function: build_model\n"),
])
def test_submit_refuses_a_job_that_carries_code(dashboard: str, store: Store, tmp_path: Path,
                                               field: str, model_yaml: str) -> None:
    marker = tmp_path / "pwned"
    text = _with_model(model_yaml.format(marker=str(marker)))
    before = set(store.jobs.all())
    r = httpx.post(f"{dashboard}/api/jobs", content=text, headers=ACTION, timeout=300)
    after = set(store.jobs.all())
    assert r.status_code == 400, r.text
    message = one_line_error(r)
    assert message.startswith("spec error: ") and field in message, message
    assert not marker.exists(), "the submitted code ran in the dashboard's child process"
    assert after == before, "nothing queued"


# --- 7. loopback is an address, the token redirect stays home, markup stays text ----------

# The dashboard's CLI in a child process that cannot resolve names beyond /etc/hosts (no
# DNS leaves the machine in tests): ``127.evil.example`` resolves nowhere.
OFFLINE_CLI = """
import socket, sys
real = socket.getaddrinfo
def offline(host, *args, **kwargs):
    if host not in ("localhost", "127.0.0.1", "::1"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (offline test)")
    return real(host, *args, **kwargs)
socket.getaddrinfo = offline
from tunecluster.cli import main
sys.argv = ["tunecluster", *sys.argv[1:]]
main()
"""


def dashboard_cli(*args: str, token: str | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TUNECLUSTER_DASHBOARD_TOKEN"}
    if token is not None:
        env["TUNECLUSTER_DASHBOARD_TOKEN"] = token
    return subprocess.run([sys.executable, "-c", OFFLINE_CLI, "dashboard", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("host", ["127.evil.example", "127.0.0.1.evil.example",
                                  "localhost.evil.example"])
def test_a_host_name_that_looks_like_loopback_needs_a_token(redis_server: RedisServer,
                                                            host: str) -> None:
    r = dashboard_cli("--host", host, "--port", "0", "--redis", redis_server.url)
    assert r.returncode == 2, (r.returncode, r.stderr)
    (line,) = r.stderr.strip().splitlines()
    assert "TUNECLUSTER_DASHBOARD_TOKEN" in line and host in line


@pytest.mark.parametrize("token,shown", [(" " * 20, "spaces"), ("", "empty"),
                                          ("\t \n" * 8, "spaces"),
                                          ("a b c d e f g h i j k", "spaces"),
                                          ("short-token", "16")])
def test_a_blank_or_short_token_is_refused_at_start(redis_server: RedisServer, token: str,
                                                     shown: str) -> None:
    try:
        r = dashboard_cli("--host", "127.0.0.1", "--port", "0", "--redis", redis_server.url,
                          token=token, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the dashboard started with the token {token!r}")
    assert r.returncode == 2, (r.returncode, r.stderr)
    (line,) = r.stderr.strip().splitlines()
    assert "TUNECLUSTER_DASHBOARD_TOKEN" in line and "16" in line and shown in line, line
    if token.strip():
        assert token not in line, "the refusal does not echo the token"
    with pytest.raises(ValueError, match="TUNECLUSTER_DASHBOARD_TOKEN"):
        start_in_background(redis_server.url, token=token or " ")


def raw_get(base: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """One request with ``target`` sent byte for byte (no client normalises it)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data, f"the server closed the connection without a reply to {target}"
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("path,kept", [
    ("/jobs/abc", "/jobs/abc"),
    ("/%2F%2Fevil.example", None),
    ("//evil.example", None),
    ("/%5C%5Cevil.example", None),
    ("/%5Cevil.example", None),
    ("/%0d%0aSet-Cookie:%20injected=1", None),
    ("/%E2%82%AC", "/%E2%82%AC"),
    ("/%ff%fe", None),
])
def test_the_token_redirect_stays_on_this_dashboard(guarded: str, path: str,
                                                    kept: str | None) -> None:
    status, headers, _ = raw_get(guarded, f"{path}?token={TOKEN}&state=running")
    assert status == 303, (path, status, headers)
    location = headers["location"]
    assert "injected" not in headers.get("set-cookie", "") and TOKEN not in location
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    assert all(32 < ord(c) < 127 for c in location), location
    # a browser resolves it against the page: the same origin, whatever the path
    resolved = urlsplit(urljoin(guarded + "/x", location))
    assert resolved.netloc == urlsplit(guarded).netloc, location
    assert resolved.query == "state=running"
    if kept is not None:
        assert resolved.path == kept
