"""One contract, every artifact store (as Optuna runs one storage suite per backend):
a directory and an S3-compatible object store (moto's server, a subprocess)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunecluster.artifact_store import (
    ArtifactStore,
    LocalStore,
    S3Store,
    is_url,
    local_root,
    open_store,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "root")
        return
    for name, value in request.getfixturevalue("s3_env").items():
        monkeypatch.setenv(name, value)
    bucket = request.getfixturevalue("s3_bucket")
    yield S3Store(f"s3://{bucket}/{uuid.uuid4().hex[:8]}", tmp_path / "staging")


def test_put_get_exists(store: ArtifactStore, tmp_path: Path) -> None:
    assert not store.exists("job-000001/results.json")
    store.put_bytes("job-000001/results.json", b'{"a": 1}')
    assert store.exists("job-000001/results.json")
    assert store.read_bytes("job-000001/results.json") == b'{"a": 1}'
    dest = tmp_path / "out" / "r.json"
    dest.parent.mkdir()
    assert store.get_file("job-000001/results.json", dest)
    assert dest.read_bytes() == b'{"a": 1}'
    assert not store.get_file("job-000001/nothing", tmp_path / "none")
    assert not (tmp_path / "none").exists()
    assert store.read_bytes("job-000001/nothing") is None


def test_move_in_consumes_the_file_and_replaces_whole(store: ArtifactStore) -> None:
    key = "job-000001/trials/00/attempt-1/last.npz"
    for content in (b"first", b"second, longer"):
        src = store.local / "job-000001" / "trials" / "00" / ".last.npz.tmp"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(content)
        store.move_in(src, store.key(store.local / key))
        assert not src.exists()
        assert store.read_bytes(key) == content


def test_local_copy_is_a_file_or_none(store: ArtifactStore) -> None:
    store.put_bytes("j/model.keras", b"weights")
    with store.local_copy("j/model.keras") as path:
        assert path is not None and path.read_bytes() == b"weights"
    with store.local_copy("j/absent.keras") as path:
        assert path is None


def test_copy_list_and_delete_prefix(store: ArtifactStore) -> None:
    store.put_bytes("job-000001/trials/00/model.keras", b"m")
    store.copy("job-000001/trials/00/model.keras", "job-000001/best_model.keras")
    store.put_bytes("job-0000010/results.json", b"other job")  # a longer id, same start
    assert store.read_bytes("job-000001/best_model.keras") == b"m"
    assert store.list("job-000001") == ["job-000001/best_model.keras",
                                        "job-000001/trials/00/model.keras"]
    with pytest.raises(FileNotFoundError):
        store.copy("job-000001/absent", "job-000001/x")
    assert store.delete_prefix("job-000001") == ["job-000001/best_model.keras",
                                                 "job-000001/trials/00/model.keras"]
    assert store.list("job-000001") == []
    assert store.delete_prefix("job-000001") == []  # idempotent
    assert store.read_bytes("job-0000010/results.json") == b"other job"


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", ""])
def test_keys_never_leave_the_root(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError, match="leaves the artifacts root"):
        store.put_bytes(key, b"x")


def test_a_url_root_is_staged_locally_and_maps_back(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS_STAGING", str(tmp_path / "stage"))
    assert is_url("s3://b/p") and not is_url("/data/artifacts") and not is_url(tmp_path)
    root = local_root("s3://bucket/prefix/")
    assert root == (tmp_path / "stage").resolve() and root.is_dir()
    remote = open_store(root)
    assert isinstance(remote, S3Store) and remote is open_store("s3://bucket/prefix")
    assert remote.url("job-000001/best_model.keras") == (
        "s3://bucket/prefix/job-000001/best_model.keras")
    assert remote.key(root / "job-000001" / "results.json") == "job-000001/results.json"
    assert isinstance(open_store(tmp_path / "dir"), LocalStore)
    with pytest.raises(ValueError, match="must start with s3://"):
        local_root("gs://bucket")


def test_ray_jobs_refuse_an_object_store_root(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray trials write to their node's disk, which a bucket root would not collect."""
    from tunecluster.ray.backend import _refuse_object_store

    monkeypatch.setenv("TUNECLUSTER_ARTIFACTS_STAGING", str(tmp_path / "stage"))
    _refuse_object_store(tmp_path / "dir")
    with pytest.raises(ValueError, match="scheduler: ray needs a shared directory.*s3://b/p"):
        _refuse_object_store(local_root("s3://b/p"))


def test_a_missing_bucket_is_named_in_the_error(tmp_path: Path, s3_env: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    store = S3Store("s3://no-such-bucket-here/p", tmp_path / "staging")
    src = tmp_path / "staging" / "f"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-here/p/j/last.npz"):
        store.move_in(src, "j/last.npz")
    assert not src.exists()
