"""The dashboard's security edges, end to end: the real server (uvicorn, over HTTP) on a
real Redis with a password, the real CLI in child processes, and a real browser.

No chief and no workers: the job whose charts carry hostile names is written through the
store's own worker protocol (enqueue, claim, report, finish), so nothing trains.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

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
