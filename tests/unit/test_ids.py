"""Ids that become file paths, and the data files a worker may read (issue 10, point 13)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tunecluster import defaults
from tunecluster.artifacts import (
    data_path,
    file_resolver,
    job_dir,
    prune_file_caches,
    remove_job_artifacts,
    trial_dir,
)
from tunecluster.errors import StoreError
from tunecluster.ids import InvalidId, check_job_id, check_trial_id, new_job_id
from tunecluster.store import Store, member

HOSTILE = ["", ".", "..", "../../etc", "a/b", "/abs", "a\\b", "x" * 81, "-lead", ".hidden",
           "a\nb", "a b", "é", "a:b", "*", "job/../../x"]


@pytest.mark.parametrize("name", ["digits-mlp", "a", "x.y_z-1", "0" * 63])
def test_ids_made_by_submit_are_valid(name: str) -> None:
    job = new_job_id(name)
    assert job.startswith(f"{name}-") and check_job_id(job) == job


@pytest.mark.parametrize("trial", ["0", "07", "123", "a" * 32, "slot-3", "t_1"])
def test_keras_tuner_trial_ids_are_valid(trial: str) -> None:
    assert check_trial_id(trial) == trial


@pytest.mark.parametrize("value", [*HOSTILE, None, 3, b"job"])
def test_hostile_ids_are_refused_with_one_line(value: object) -> None:
    for check in (check_job_id, check_trial_id):
        with pytest.raises(InvalidId) as info:
            check(value)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
        assert isinstance(info.value, StoreError)


def test_artifact_paths_refuse_ids_that_leave_the_root(tmp_path: Path) -> None:
    assert job_dir(tmp_path, "job-abc123") == tmp_path / "job-abc123"
    assert trial_dir(tmp_path, "job-abc123", "07") == tmp_path / "job-abc123" / "trials" / "07"
    for bad in ("../../etc", "..", "a/b"):
        with pytest.raises(StoreError):
            job_dir(tmp_path, bad)
        with pytest.raises(StoreError):
            trial_dir(tmp_path, "job-abc123", bad)


def test_a_foreign_ready_entry_is_refused_and_its_lease_dropped(store: Store) -> None:
    r, k = store.client, store.keys
    for job, trial in (("../../etc", "00"), ("job-abc123", "../x")):
        r.hset(k.trial(job, trial), mapping={"state": "READY", "attempts": 0})
        r.rpush(k.ready, member(job, trial))
    assert store.queue.claim("w", 30) is None
    assert store.queue.claim("w", 30) is None
    assert r.zcard(k.leases) == 0 and r.llen(k.ready) == 0


def test_non_uploaded_data_is_refused_without_a_data_root(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(defaults.DATA_ROOT_ENV, raising=False)
    secret = tmp_path / "secret.csv"
    secret.write_text("TOP-SECRET-HEADER,y\n1,2\n")
    with pytest.raises(ValueError) as info:
        data_path(str(secret))
    text = str(info.value)
    assert str(secret) in text and defaults.DATA_ROOT_ENV in text
    assert "TOP-SECRET" not in text and "\n" not in text


def test_data_root_allows_files_under_it_only(monkeypatch, tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    inside = root / "sub" / "train.csv"
    inside.write_text("a,y\n1,2\n")
    outside = tmp_path / "outside.csv"
    outside.write_text("a,y\n1,2\n")
    (root / "link.csv").symlink_to(outside)
    monkeypatch.setenv(defaults.DATA_ROOT_ENV, str(root))
    assert data_path(str(inside)) == str(inside.resolve())
    assert data_path("sub/train.csv") == str(inside.resolve())  # relative: under the root
    for bad in (str(outside), str(root / "link.csv"), str(root / ".." / "outside.csv"),
                "../outside.csv"):
        with pytest.raises(ValueError, match=defaults.DATA_ROOT_ENV):
            data_path(bad)


def test_resolver_reads_uploaded_files_and_refuses_the_rest(monkeypatch, store: Store,
                                                            tmp_path: Path) -> None:
    monkeypatch.delenv(defaults.DATA_ROOT_ENV, raising=False)
    job = store.jobs.submit("job", "{}", {}, 0, "native", {"/data/x.csv": b"a,y\n1,2\n"})
    resolve = file_resolver(store, job, tmp_path, ["/data/x.csv"])
    assert Path(resolve("/data/x.csv")).read_bytes() == b"a,y\n1,2\n"
    with pytest.raises(ValueError, match="was not uploaded"):
        resolve("/etc/passwd")


def _cache(root: Path, job: str, age_s: float = 0) -> Path:
    path = root / ".cache" / job / "files" / "d" / "x.csv"
    path.parent.mkdir(parents=True)
    path.write_text("a")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return root / ".cache" / job


def test_file_caches_of_ended_jobs_go_and_active_ones_are_bounded(tmp_path: Path) -> None:
    ended = _cache(tmp_path, "ended-000001")
    active = [_cache(tmp_path, f"live-00000{i}", age_s=600 - i) for i in range(5)]
    fresh = _cache(tmp_path, "fresh-000001")  # just used: kept even beyond the bound
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (tmp_path / ".cache" / "evil-000001").symlink_to(outside)
    removed = prune_file_caches(tmp_path, [p.name for p in active] + [fresh.name], keep=3)
    assert not ended.exists()
    assert fresh.exists()
    # the 3 most recently used caches stay (fresh + live-4, live-3); older active ones go
    assert [p.exists() for p in active] == [False, False, False, True, True]
    assert (outside / "keep").exists()  # a symlink is removed, never followed
    assert set(removed) >= {"ended-000001", "live-000000"}


def test_remove_job_artifacts_never_follows_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    (root / "job-000001" / "trials" / "0").mkdir(parents=True)
    _cache(root, "job-000001")
    assert remove_job_artifacts(root, "job-000001")
    assert not (root / "job-000001").exists() and not (root / ".cache" / "job-000001").exists()
    assert remove_job_artifacts(root, "job-000001") == []  # idempotent
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "file").write_text("x")
    (root / "job-000002").symlink_to(outside)
    with pytest.raises(StoreError, match="symlink"):
        remove_job_artifacts(root, "job-000002")
    assert (outside / "file").exists()


def test_submit_says_when_a_data_file_is_too_large_to_travel(monkeypatch, tmp_path: Path,
                                                             caplog) -> None:
    from tunecluster.api.submission import gather_files
    from tunecluster.spec import parse_spec

    big, small = tmp_path / "big.csv", tmp_path / "small.csv"
    big.write_text("a,y\n" + "1,2\n" * 50)
    small.write_text("a,y\n1,2\n")
    monkeypatch.setattr(defaults, "MAX_UPLOAD_BYTES", 100)
    spec = parse_spec({"name": "j", "model": {"builtin": "mlp"}, "data": {
        "files": {"train": str(big), "valid": str(small), "test": str(small)}, "target": "y"}})
    with caplog.at_level("WARNING"):
        files = gather_files(spec)
    assert set(files) == {str(small)}
    assert str(big) in caplog.text and defaults.DATA_ROOT_ENV in caplog.text
