"""examples/notebook.ipynb, executed headless with a real kernel (nbclient), against the
shared test cluster: no error cell, and the score it prints is the job's best score."""

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


def test_the_example_notebook_runs_with_a_real_kernel(cluster, tmp_path: Path,
                                                      monkeypatch) -> None:
    # The kernel inherits these: the tuner finds the test cluster as a user's would.
    monkeypatch.setenv("TUNECLUSTER_REDIS_URL", cluster.url)
    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS", str(cluster.artifacts))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert "import tunecluster.keras_tuner as kt" in notebook.cells[1].source
    start = time.monotonic()
    NotebookClient(notebook, kernel_name="python3", timeout=180,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    elapsed = time.monotonic() - start
    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(_text(o) for o in outputs)
    assert "Trial " in text and "Best val_accuracy So Far" in text  # verbose progress
    job_id = re.search(r"^job: (\S+)$", text, re.M).group(1)
    best = float(re.search(r"^best val_accuracy: ([0-9.]+)$", text, re.M).group(1))
    test_accuracy = float(re.search(r"^test accuracy: ([0-9.]+)$", text, re.M).group(1))
    results = Client(cluster.url).job(job_id).results()
    assert results["state"] == "completed" and len(results["trials"]) == 2
    assert best == pytest.approx(results["best"]["score"], abs=1e-4)
    assert 0.0 <= test_accuracy <= 1.0  # one epoch of a tiny model: any accuracy
    assert "'n_hidden'" in text  # top3_params[0].values, the cell's displayed value
    print(f"notebook: {elapsed:.1f}s")
