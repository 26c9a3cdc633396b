"""The Python client never runs code it read from Redis unless its user asks.

A job record is written straight into a real Redis, as anyone who can write Redis
could: its ``model.source`` would leave a marker file if it ran. ``Job.best_model``
loads the real Keras model from the artifacts root without it, with the user's own
objects or module when the model needs code, and runs the stored source only with
``trust_job_code=True``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunecluster import Client
from tunecluster.cluster import RedisServer
from tunecluster.errors import StoreError
from tunecluster.store import Store

pytestmark = pytest.mark.timeout(120)

LAYER = '''
import keras


class Doubler(keras.layers.Layer):
    def call(self, x):
        return x * 2
'''

# What the stored job says its model module is: the class, plus a payload that leaves
# a marker when the module runs.
STORED = LAYER.replace("import keras\n", "import keras\nimport pathlib\n"
                       "pathlib.Path({marker!r}).write_text('ran')\n") + '''

def build_model(hp):
    raise RuntimeError("not called here")
'''


def _job(store: Store, root: Path, marker: Path, custom: bool) -> str:
    import keras

    spec = {"name": "trust", "data": {"dataset": "digits"},
            "model": {"module": "model.py", "function": "build_model",
                      "source": STORED.format(marker=str(marker))},
            "search": {"objective": {"name": "val_accuracy", "direction": "max"}}}
    job = store.jobs.submit("trust", json.dumps(spec), {}, 0, "native")
    layers = [keras.Input((3,)), keras.layers.Dense(2)]
    if custom:  # a class only the job's module defines
        namespace: dict = {}
        exec(compile(LAYER, "layer.py", "exec"), namespace)
        layers.append(namespace["Doubler"]())
    model = keras.Sequential(layers)
    (root / job).mkdir(parents=True)
    model.save(root / job / "best_model.keras")
    store.jobs.set_state(job, "finalizing")  # a job ends through finalize
    store.jobs.set_state(job, "completed")
    return job


@pytest.fixture
def setup(server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TUNECLUSTER_ALLOW_CODE_UPLOAD", raising=False)  # its default: on
    store = Store.from_url(server.url)
    store.client.flushdb()
    root = tmp_path / "artifacts"
    return store, Client(server.url, artifacts=root), root, tmp_path / "marker"


def test_best_model_runs_no_code_from_redis(setup) -> None:
    store, client, root, marker = setup
    job = _job(store, root, marker, custom=False)
    model = client.job(job).best_model()
    assert model.layers[-1].units == 2
    assert not marker.exists(), "the client ran the job's source read from Redis"


def test_a_model_with_code_of_its_own_says_what_it_needs(setup, tmp_path: Path) -> None:
    store, client, root, marker = setup
    job = _job(store, root, marker, custom=True)
    with pytest.raises(StoreError) as info:
        client.job(job).best_model()
    text = str(info.value)
    assert "\n" not in text and "model.py" in text and "trust_job_code" in text, text
    assert not marker.exists()
    # the user's own copy of the module
    mine = tmp_path / "mine.py"
    mine.write_text(LAYER)
    assert client.job(job).best_model(module=mine).layers[-1].__class__.__name__ == "Doubler"
    assert not marker.exists()
    # explicitly trusting the cluster's copy runs it
    client.job(job).best_model(trust_job_code=True)
    assert marker.read_text() == "ran"
