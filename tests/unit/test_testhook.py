"""The fault tests' hook (tunecluster/testhook.py) in real processes: it stops the first
process that reaches its point, once per marker file, and does nothing otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tunecluster.testhook import STOP_AT_ENV

REACH = "from tunecluster.testhook import stop_here; stop_here('finish'); print('ran on')"


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if k != STOP_AT_ENV}
    return subprocess.Popen([sys.executable, "-c", REACH], env={**clean, **env},
                            stdout=subprocess.PIPE, text=True)


def _stopped(proc: subprocess.Popen[str], within_s: float = 30) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and proc.poll() is None:
        if psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED:
            return True
        time.sleep(0.02)
    return False


def test_the_first_process_at_the_point_stops_itself_once(tmp_path: Path) -> None:
    marker = tmp_path / "held"
    procs = [_start({STOP_AT_ENV: f"finish:{marker}"})]
    try:
        assert _stopped(procs[0]), "the process at the point did not stop itself"
        assert marker.read_text() == str(procs[0].pid)
        procs.append(_start({STOP_AT_ENV: f"finish:{marker}"}))  # the marker exists
        assert procs[1].communicate(timeout=30)[0].strip() == "ran on"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)


def test_the_hook_is_inert_unless_it_names_the_point(tmp_path: Path) -> None:
    for env in ({}, {STOP_AT_ENV: f"finalize:{tmp_path / 'held'}"}, {STOP_AT_ENV: "finish"}):
        proc = _start(env)
        assert proc.communicate(timeout=30)[0].strip() == "ran on", env
        assert proc.returncode == 0
    assert not (tmp_path / "held").exists()



def test_hang_here_blocks_only_the_first_thread_and_the_process_runs_on(tmp_path) -> None:
    from tunecluster.testhook import HANG_AT_ENV

    marker = tmp_path / "hung"
    code = ("import os, threading\n"
            "from tunecluster.testhook import hang_here\n"
            "first = threading.Thread(target=hang_here, args=('chief_tick',), daemon=True)\n"
            "first.start(); first.join(1.0)\n"
            "hang_here('chief_tick')\n"  # the marker exists: this thread runs on
            "print(first.is_alive(), os.getpid(), flush=True)\n")
    clean = {k: v for k, v in os.environ.items() if k != HANG_AT_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**clean, HANG_AT_ENV: f"chief_tick:{marker}"}, timeout=60)
    hung, pid = out.stdout.split()
    assert hung == "True", "the first thread at the point did not block"
    assert marker.read_text() == pid
