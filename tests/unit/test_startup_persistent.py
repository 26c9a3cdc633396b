"""The record of `tunecluster up` (cluster/persistent.py): where it lives, what counts
as running, and a stale record's clean-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunecluster.cluster import persistent


@pytest.fixture()
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state" / "cluster.json"
    monkeypatch.setenv(persistent.STATE_ENV, str(path))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _state(tmp_path: Path, pid: int) -> dict:
    return {"url": "redis://127.0.0.1:1/0", "artifacts": str(tmp_path),
            "redis_pid": pid, "redis_dir": str(tmp_path / "redis"), "chief_pid": pid,
            "worker_pids": [pid], "log_dir": str(tmp_path)}


def test_state_file_follows_the_variable(record: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert persistent.state_file() == record
    monkeypatch.delenv(persistent.STATE_ENV)
    assert persistent.state_file() == Path.home() / ".tunecluster" / "cluster.json"


def test_no_record_no_url(record: Path) -> None:
    assert persistent.current_url() is None


def test_stale_record_is_removed_once_with_a_notice(record: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    record.parent.mkdir(parents=True)
    (tmp_path / "redis").mkdir()
    record.write_text(json.dumps(_state(tmp_path, _dead_pid())))
    assert persistent.current_url() is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no longer running" in err
    assert not record.exists() and not (tmp_path / "redis").exists()
    assert persistent.current_url() is None
    assert capsys.readouterr().err == ""


def test_a_live_pid_that_is_not_redis_does_not_count(record: Path, tmp_path: Path) -> None:
    """A recorded pid reused by another process (here: this test) is not the cluster."""
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(_state(tmp_path, os.getpid())))
    state = persistent.read_state()
    assert state is not None and not state.alive()


def test_unreadable_record_is_stale(record: Path) -> None:
    record.parent.mkdir(parents=True)
    record.write_text("{not json")
    assert persistent.read_state() is None
    assert persistent.current(notice=False) is None
    assert not record.exists()


def test_down_without_a_cluster_says_so(record: Path) -> None:
    with pytest.raises(persistent.ClusterError, match="no local cluster is up"):
        persistent.down()


def test_stale_clean_up_leaves_a_reused_pid_alone(record: Path, tmp_path: Path) -> None:
    """The record's pids now belong to an unrelated process: it is not signalled."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record.parent.mkdir(parents=True)
        state = _state(tmp_path, _dead_pid())
        state["chief_pid"], state["worker_pids"] = other.pid, [other.pid]
        record.write_text(json.dumps(state))
        assert persistent.current(notice=False) is None
        assert not record.exists()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
