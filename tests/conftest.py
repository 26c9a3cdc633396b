"""Shared test setup: keep TensorFlow quiet before anything imports it; no silent skips
under CI; an S3-compatible server for the tests that need one."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --- no silent skips in CI ---------------------------------------------------------------
# Locally a test whose dependency is missing (chromium, moto, Ray, pyarrow, ...) skips.
# Under CI=true (the environment CI runs with; `make test` first runs `make install-dev`,
# which provides every one of them: pip's '.[dev]' extra and, as root, chromium from apt)
# a missing dependency is a failure that names it, never a skip that keeps `make test`
# green. What `make install-dev` cannot provide (a GPU, root, a Docker engine where
# tests/e2e/docker_env.sh cannot install one) stays a skip.

from collections.abc import Callable  # noqa: E402
from typing import NoReturn  # noqa: E402

import pytest  # noqa: E402


def in_ci() -> bool:
    """True when the tests run under CI (CI=true, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _require(name: str, why: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI=true and {name} is missing: {why}; `make install-dev` (run by"
                    " `make test`) provides it, so this is a failure, not a skip", pytrace=False)
    pytest.skip(f"{name} is missing: {why} (a failure under CI=true)")


@pytest.fixture(scope="session")
def require() -> Callable[[str, str], NoReturn]:
    """``require(name, why)``: skip the test because ``name`` (a dependency `make
    install-dev` provides) is missing here; under CI=true, fail it instead."""
    return _require


def _import_skip(reason: str) -> bool:
    # pytest.importorskip's own reason: every Python module the tests import comes with
    # `make install-dev` (pip install -e '.[dev]')
    return reason.startswith(("could not import", "Skipped: could not import"))


def _ci_failure(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Turn an importorskip skip into a failure under CI=true, naming the module."""
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if _import_skip(reason):
        report.outcome = "failed"
        report.longrepr = (f"CI=true and a module is missing ({reason}); `make"
                           " install-dev` (pip install -e '.[dev]') provides it, so this is"
                           " a failure, not a skip")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # noqa: ANN201
    outcome = yield
    _ci_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    outcome = yield
    _ci_failure(outcome.get_result())


# --- an S3-compatible server (moto's standalone server) on a free loopback port --------

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterator  # noqa: E402

S3_BUCKET = "tunecluster-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto's S3 server as a subprocess, with a bucket; the environment a process needs
    to reach it (an endpoint and dummy credentials, as MinIO would take)."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        _require("moto's S3 server (moto[s3], flask, flask-cors: the test extra)", str(exc))
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"TUNECLUSTER_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(f"{endpoint}/{S3_BUCKET}", method="PUT")
                urllib.request.urlopen(req, timeout=2).close()  # creates the bucket
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def s3_bucket(s3_env: dict[str, str]) -> str:
    """The bucket ``s3_env``'s server holds (tests use a fresh prefix each)."""
    return S3_BUCKET
