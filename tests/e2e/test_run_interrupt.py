"""Ctrl-C in ``tunecluster run`` says what became of the job and leaves nothing
running: the job is cancelled and the embedded cluster (Redis, chief, workers and their
trial processes) is gone. Real processes; the terminal's SIGINT to the foreground group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tunecluster.errors import ExitCode

from .conftest import EXAMPLES


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_ctrl_c_in_run_cancels_the_job_and_leaves_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TUNECLUSTER_REDIS_URL"}
    env["TUNECLUSTER_CLUSTER_FILE"] = str(tmp_path / "none" / "cluster.json")  # no `up`
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunecluster", "run", str(EXAMPLES / "digits.yaml"),
             "--set", "train.epochs=500", "--set", "search.max_trials=50",
             "--artifacts", str(tmp_path / "artifacts")],
            stdout=subprocess.PIPE, stderr=err_file, text=True, env=env,
            start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while "submitted" not in errors.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, errors.read_text()
                time.sleep(0.2)
            time.sleep(4)  # trials start training
            tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
            assert len(tree) >= 4, tree  # redis, chief, 2 workers (and trial processes)
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal sends
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = errors.read_text()
    assert proc.returncode == ExitCode.INTERRUPTED == 130, text
    assert "Aborted!" not in text
    last = [ln for ln in text.splitlines() if ln.strip()][-1]
    assert last.startswith("interrupted: job digits-") and " cancelled; " in last, last
    assert "nothing is left running" in last, last
    time.sleep(1)
    assert _alive(tree) == [], [psutil.Process(p).cmdline() for p in _alive(tree)]
