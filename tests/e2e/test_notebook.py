"""examples/notebook.ipynb, executed headless with a real kernel (nbclient), against the
shared test cluster: no error cell, the score it prints is the job's best score, and the
search shows a live display (a trial table and a progress bar updated in place)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tunecluster.api import Client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.ipynb"


def _text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return str(output.get("text", ""))
    return str((output.get("data") or {}).get("text/plain", ""))


class _RecordingClient(NotebookClient):
    """Keeps every HTML display update the kernel sends, in order."""

    updates: list[str]

    def process_message(self, msg, cell, cell_index):  # type: ignore[no-untyped-def]
        if msg["header"]["msg_type"] == "update_display_data":
            self.updates.append(msg["content"]["data"].get("text/html", ""))
        return super().process_message(msg, cell, cell_index)


def test_the_example_notebook_runs_with_a_real_kernel(cluster, tmp_path: Path,
                                                      monkeypatch) -> None:
    # The kernel inherits these: the tuner finds the test cluster as a user's would.
    monkeypatch.setenv("TUNECLUSTER_REDIS_URL", cluster.url)
    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert "import tunecluster.keras_tuner as kt" in notebook.cells[1].source
    start = time.monotonic()
    client = _RecordingClient(notebook, kernel_name="python3", timeout=180,
                              resources={"metadata": {"path": str(tmp_path)}})
    client.updates = []
    client.execute()
    elapsed = time.monotonic() - start
    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(_text(o) for o in outputs)
    # verbose=1 in a notebook: one display updated in place, not printed lines
    assert "Best val_accuracy So Far" not in text
    assert len(client.updates) >= 2, client.updates
    last = client.updates[-1]
    assert '<progress value="2" max="2"' in last and "2/2 trials done" in last
    assert last.count("<tr>") == 1 + 2  # the header and both trials
    assert any('<progress value="0" max="2"' in u or '<progress value="1" max="2"' in u
               for u in client.updates[:-1])  # it was shown before the end, live
    search_cell = next(c for c in notebook.cells if ".search(" in c.source)
    shown = [o for o in search_cell.outputs if "text/html" in (o.get("data") or {})]
    assert len(shown) == 1 and shown[0]["data"]["text/html"] == last  # updated in place
    job_id = re.search(r"^job: (\S+)$", text, re.M).group(1)
    best = float(re.search(r"^best val_accuracy: ([0-9.]+)$", text, re.M).group(1))
    test_accuracy = float(re.search(r"^test accuracy: ([0-9.]+)$", text, re.M).group(1))
    results = Client(cluster.url).job(job_id).results()
    assert results["state"] == "completed" and len(results["trials"]) == 2
    assert best == pytest.approx(results["best"]["score"], abs=1e-4)
    assert 0.0 <= test_accuracy <= 1.0  # one epoch of a tiny model: any accuracy
    assert "'n_hidden'" in text  # top3_params[0].values, the cell's displayed value
    print(f"notebook: {elapsed:.1f}s")


# The stop button: the job cancelled and the cell ended with KeyboardInterrupt, within
# this of the interrupt (the cancel lands at the chief's next tick, a trial stops within
# an epoch: a second or two here)
STOP_MARGIN_S = 30.0
_STOPPED_CELL = """\
import sys
sys.path.insert(0, {tests!r})
import dropin_notebook_style as example
import tunecluster.keras_tuner as kt

tuner = kt.RandomSearch(example.build_model, objective="val_accuracy", max_trials=20,
                        directory={directory!r}, project_name="stopped")
tuner.search(example.X_train, example.y_train, epochs=200,
             validation_data=(example.X_valid, example.y_valid))
"""


def test_the_stop_button_cancels_a_drop_in_search(cluster, tmp_path: Path,
                                                  monkeypatch) -> None:
    from jupyter_client.manager import start_new_kernel

    from tunecluster.api.tuner_project import read_project

    monkeypatch.setenv("TUNECLUSTER_REDIS_URL", cluster.url)
    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    store = Client(cluster.url).store
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    job = None
    try:
        cell = kc.execute(_STOPPED_CELL.format(tests=str(Path(__file__).parent),
                                               directory=str(tmp_path)))
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:  # a trial trains: the cell waits on the cluster
            job = job or read_project(str(tmp_path), "stopped", "RandomSearch")
            if job and any(t.get("state") == "RUNNING" and t.get("last_epoch")
                           for t in store.jobs.trials(job)):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no trial of the cell's search reported an epoch ({job})")
        assert not store.jobs.get(job).cancel_requested
        pressed = time.monotonic()
        km.interrupt_kernel()  # the stop button, once
        reply = None
        while reply is None or reply["parent_header"].get("msg_id") != cell:
            left = STOP_MARGIN_S - (time.monotonic() - pressed)
            assert left > 0, f"the cell still runs {STOP_MARGIN_S:.0f} s after the interrupt" \
                             f" (job {store.jobs.get(job).state})"
            try:
                reply = kc.get_shell_msg(timeout=left)
            except Exception:  # noqa: BLE001 - queue.Empty: no reply in time
                reply = {"parent_header": {}}
        took = time.monotonic() - pressed
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
        assert store.jobs.get(job).state == "cancelled"
        assert not any(t.get("state") == "RUNNING" for t in store.jobs.trials(job))
        print(f"stop button: job cancelled, the cell ended after {took:.1f} s")
    finally:
        if job is not None:
            store.jobs.request_cancel(job)  # a failed test leaves no search on the cluster
        kc.stop_channels()
        km.shutdown_kernel(now=True)
