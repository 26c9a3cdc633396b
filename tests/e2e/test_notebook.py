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
