"""store/downloads.py against a real Redis: publish under the fence, read back verified,
bounded, deduplicated, and gone with ``delete``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tunecluster.cluster import RedisServer
from tunecluster.errors import StoreError
from tunecluster.store import Store, downloads
from tunecluster.store.downloads import ChecksumMismatch, DownloadError
from tunecluster.store.fence import Fence, LostLeadership, Writes

pytestmark = pytest.mark.timeout(60)

SPEC = {"name": "job", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"},
        "search": {"objective": {"name": "val_accuracy", "direction": "max"}}}


@pytest.fixture
def store(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setattr(downloads, "CHUNK_BYTES", 1000)  # many chunks from small files
    s = Store.from_url(server.url)
    s.client.flushdb()
    return s


@pytest.fixture
def chief(tmp_path: Path) -> Path:
    root = tmp_path / "chief-artifacts"
    root.mkdir()
    return root


def _job(store: Store) -> str:
    return store.jobs.submit("job", json.dumps(SPEC), {}, 0, "native")


def _file(root: Path, job: str, name: str, data: bytes) -> Path:
    path = root / job / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _finish(store: Store, job: str, root: Path, files: dict[str, Path],
            fence: Fence = Fence.NONE, limit: int | None = None) -> downloads.Publication:
    """What finalize does: publish, then stage it with the final state in one step."""
    if store.jobs.get(job).state.is_final:  # finalized again, as by a restarted chief
        store.client.hset(store.keys.job(job), "state", "finalizing")
    else:  # as the chief does before it finalizes (fenced as its every write)
        store.jobs.set_state(job, "finalizing", fence=fence)
    pub = downloads.publish(store, job, root, files.items(), fence, limit=limit)
    writes = pub.stage(Writes(), store.keys)
    store.jobs.stage_state(writes, job, "completed")
    writes.apply(store.client, fence)
    return pub


def _keys(store: Store, job: str) -> list[str]:
    return sorted(k for k in store.client.scan_iter(match=f"tc:job:{job}:download*"))


BINARY = bytes(range(256)) * 9 + b"\x00\xff\xfe"  # 2307 bytes, not UTF-8: three chunks


def test_round_trip_is_byte_identical_and_says_where_from(store: Store, chief: Path,
                                                          tmp_path: Path) -> None:
    job = _job(store)
    files = {"best_model.keras": _file(chief, job, "best_model.keras", BINARY),
             "results.json": _file(chief, job, "results.json", b"{}"),
             "trials/00/model.keras": _file(chief, job, "trials/00/attempt-1/model.keras",
                                            b"other"),
             "trials/01/model.keras": _file(chief, job, "trials/01/attempt-1/model.keras",
                                            BINARY)}
    _finish(store, job, chief, files)
    index = downloads.index(store, job)
    assert index["best_model.keras"]["size"] == len(BINARY)
    assert index["trials/00/model.keras"]["rel"] == f"{job}/trials/00/attempt-1/model.keras"
    # identical files are held once; no part is left behind
    assert len(_keys(store, job)) == 1 + 3
    assert not [k for k in _keys(store, job) if k.endswith(":part")]

    got = downloads.retrieve(store, job, "best_model.keras", tmp_path / "out" / "m.keras",
                             local_root=tmp_path / "elsewhere")
    assert got.source == "redis" and got.path.read_bytes() == BINARY
    assert "downloaded through Redis" in got.message and "\n" not in got.message
    assert downloads.fetch(store, job, "trials/00/model.keras", tmp_path / "t.keras") \
        .read_bytes() == b"other"
    assert downloads.names(store, job)[:2] == ["results.json", "best_model.keras"]
    into_dir = downloads.fetch(store, job, "best_model.keras", tmp_path / "out")
    assert into_dir == tmp_path / "out" / "best_model.keras"  # a directory keeps the name

    local = downloads.retrieve(store, job, "best_model.keras", tmp_path / "l.keras", chief)
    assert local.source == "local" and local.path.read_bytes() == BINARY
    assert "sha256 verified" in local.message


def test_a_local_file_that_differs_is_not_used(store: Store, chief: Path,
                                               tmp_path: Path) -> None:
    job = _job(store)
    _finish(store, job, chief, {"best_model.keras": _file(chief, job, "best_model.keras",
                                                          BINARY)})
    mine = tmp_path / "mine"
    _file(mine, job, "best_model.keras", b"stale copy from another cluster")
    got = downloads.retrieve(store, job, "best_model.keras", tmp_path / "m.keras", mine)
    assert got.source == "redis" and got.path.read_bytes() == BINARY
    assert "sha256 differs" in got.message


def test_a_tampered_blob_fails_the_checksum_and_writes_nothing(store: Store, chief: Path,
                                                               tmp_path: Path) -> None:
    job = _job(store)
    _finish(store, job, chief, {"best_model.keras": _file(chief, job, "best_model.keras",
                                                          BINARY)})
    sha = downloads.index(store, job)["best_model.keras"]["sha256"]
    store.client.lset(store.keys.download_blob(job, sha), 1, "X" * 1000)  # chunk 2 of 3
    dest = tmp_path / "out" / "m.keras"
    with pytest.raises(ChecksumMismatch, match="fails its checksum") as info:
        downloads.retrieve(store, job, "best_model.keras", dest)
    assert "\n" not in str(info.value)
    assert not dest.exists() and os.listdir(dest.parent) == []  # no temp file either


def test_over_the_limit_is_indexed_not_published_and_the_error_says_where(
        store: Store, chief: Path, tmp_path: Path) -> None:
    job = _job(store)
    path = _file(chief, job, "best_model.keras", BINARY)
    _finish(store, job, chief, {"best_model.keras": path,
                                "results.json": _file(chief, job, "results.json", b"{}")},
            limit=2000)
    meta = downloads.index(store, job)["best_model.keras"]
    assert not meta["published"] and meta["size"] == len(BINARY) and meta["sha256"]
    assert len(_keys(store, job)) == 1 + 1  # index + results.json only
    with pytest.raises(DownloadError) as info:
        downloads.retrieve(store, job, "best_model.keras", tmp_path / "m.keras",
                           tmp_path / "elsewhere")
    text = str(info.value)
    assert "over the download limit" in text and "TUNECLUSTER_MAX_DOWNLOAD_BYTES=2000" in text
    assert str(path) in text and "--artifacts" in text and "no exported model" not in text
    # where the store is mounted, the same file is read (verified)
    got = downloads.retrieve(store, job, "best_model.keras", tmp_path / "m.keras", chief)
    assert got.source == "local" and got.path.read_bytes() == BINARY


def test_a_deposed_chief_publishes_nothing(store: Store, chief: Path) -> None:
    job = _job(store)
    store.client.set(store.keys.chief_lock, "new-chief")
    path = _file(chief, job, "best_model.keras", BINARY)
    with pytest.raises(LostLeadership):
        _finish(store, job, chief, {"best_model.keras": path},
                fence=Fence(store.keys.chief_lock, "old-chief"))
    assert _keys(store, job) == []
    assert store.jobs.get(job).state == "queued"
    # the rightful chief publishes fine
    _finish(store, job, chief, {"best_model.keras": path},
            fence=Fence(store.keys.chief_lock, "new-chief"))
    assert downloads.index(store, job)["best_model.keras"]["published"]


def test_republishing_uploads_nothing_twice_and_drops_replaced_blobs(
        store: Store, chief: Path, tmp_path: Path) -> None:
    job = _job(store)
    path = _file(chief, job, "results.json", b"first")
    _finish(store, job, chief, {"results.json": path})
    again = downloads.publish(store, job, chief, [("results.json", path)])
    assert again.uploaded == [] and again.stale == []
    path.write_bytes(b"second")
    pub = _finish(store, job, chief, {"results.json": path})
    assert len(pub.uploaded) == 1 and len(pub.stale) == 1
    assert len(_keys(store, job)) == 2
    got = downloads.fetch(store, job, "results.json", tmp_path / "r.json")
    assert got.read_bytes() == b"second"


def test_empty_file(store: Store, chief: Path, tmp_path: Path) -> None:
    job = _job(store)
    _finish(store, job, chief, {"results.json": _file(chief, job, "results.json", b"")})
    assert downloads.fetch(store, job, "results.json", tmp_path / "r.json").read_bytes() == b""


def test_errors_tell_the_truth_for_what_was_never_published(store: Store,
                                                            tmp_path: Path) -> None:
    job = _job(store)
    with pytest.raises(DownloadError, match=r"no exported model yet \(state queued\)"):
        downloads.retrieve(store, job, "best_model.keras", tmp_path / "m.keras")
    store.jobs.set_state(job, "finalizing")  # a job ends through finalize
    store.jobs.set_state(job, "failed", error="no trial completed")
    with pytest.raises(DownloadError, match="no exported model: it ended failed: no trial"):
        downloads.retrieve(store, job, "best_model.keras", tmp_path / "m.keras")
    with pytest.raises(DownloadError, match="not an artifact name"):
        downloads.retrieve(store, job, "../../etc/passwd", tmp_path / "x")
    with pytest.raises(StoreError, match="no job"):
        downloads.retrieve(store, "nojob-abcdef", "best_model.keras", tmp_path / "m.keras")
    assert not (tmp_path / "m.keras").exists()


def test_delete_removes_every_download_key(store: Store, chief: Path) -> None:
    job = _job(store)
    files = {"best_model.keras": _file(chief, job, "best_model.keras", BINARY),
             "results.json": _file(chief, job, "results.json", b"{}")}
    _finish(store, job, chief, files)
    # a part left by a chief that died while appending
    store.client.rpush(store.keys.download_part(job, "f" * 64), "half")
    assert len(_keys(store, job)) == 4
    store.jobs.delete(job)
    assert _keys(store, job) == []
    assert list(store.client.scan_iter(match=f"*{job}*")) == []


def test_downloads_leave_redis_room_for_the_control_plane(store: Store, chief: Path,
                                                          tmp_path: Path) -> None:
    """Under maxmemory a file that would take Redis past half of it is not published
    (noeviction would then refuse the control plane's own writes); the job still ends."""
    job = _job(store)
    used = int(store.client.info("memory")["used_memory"])
    store.client.config_set("maxmemory", str(used * 2 + 2_000_000))
    try:
        big = _file(chief, job, "best_model.keras", os.urandom(used // 2 + 1_500_000))
        _finish(store, job, chief, {"best_model.keras": big,
                                    "results.json": _file(chief, job, "results.json", b"{}")})
    finally:
        store.client.config_set("maxmemory", "0")
    assert store.jobs.get(job).state == "completed"
    meta = downloads.index(store, job)["best_model.keras"]
    assert not meta["published"] and "Redis has no room for it" in meta["reason"]
    assert downloads.index(store, job)["results.json"]["published"]
    with pytest.raises(DownloadError, match="no room .* maxmemory"):
        downloads.retrieve(store, job, "best_model.keras", tmp_path / "m.keras")


def test_a_client_with_an_s3_root_reads_the_bucket_else_redis(
        store: Store, chief: Path, tmp_path: Path, s3_env: dict[str, str], s3_bucket: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Published from a chief whose root is a bucket: a client with credentials and
    ``--artifacts s3://...`` reads the bucket (verified); one without goes through Redis
    and says why; a file over the limit names its s3:// URL."""
    from tunecluster.artifact_store import S3Store

    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    url = f"s3://{s3_bucket}/downloads-{os.getpid()}-{tmp_path.name}"
    bucket = S3Store(url, tmp_path / "chief-staging")
    job = _job(store)
    bucket.put_bytes(f"{job}/best_model.keras", BINARY)
    pub = downloads.publish(store, job, chief,
                            [("best_model.keras", _file(chief, job, "best_model.keras",
                                                        BINARY))], limit=2000)
    pub.index["best_model.keras"].update(path=bucket.url(f"{job}/best_model.keras"))
    writes = pub.stage(Writes(), store.keys)
    store.jobs.set_state(job, "finalizing")
    store.jobs.stage_state(writes, job, "completed")
    writes.apply(store.client)

    got = downloads.retrieve(store, job, "best_model.keras", tmp_path / "a.keras", url)
    assert got.source == "local" and got.path.read_bytes() == BINARY
    assert f"read from the artifacts store at {url}/{job}/best_model.keras" in got.message
    # not published (not among the top k): read from the bucket, unverified
    store.client.hset(store.keys.trial(job, "07"), mapping={
        "state": "COMPLETED", "model": f"{job}/trials/07/attempt-2/model.keras"})
    bucket.put_bytes(f"{job}/trials/07/attempt-2/model.keras", b"trial seven")
    got = downloads.retrieve(store, job, "trials/07/model.keras", tmp_path / "7.keras", url)
    assert got.path.read_bytes() == b"trial seven" and "not verified" in got.message
    assert f"{url}/{job}/trials/07/attempt-2/model.keras" in got.message
    # over the limit (2000 bytes) and no credentials here: the error says where it is
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    monkeypatch.setenv("TUNECLUSTER_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    from tunecluster import artifact_store

    monkeypatch.setattr(artifact_store, "_mounted", {})  # a fresh process's view
    with pytest.raises(DownloadError) as err:
        downloads.retrieve(store, job, "best_model.keras", tmp_path / "b.keras", url)
    text = str(err.value)
    assert "cannot be read by this client" in text and f"aws s3 cp {url}/{job}" in text
    assert not (tmp_path / "b.keras").exists()


SECRET = b"root:x:0:0:a file outside the artifacts root\n"


@pytest.mark.parametrize("forged", [
    lambda job, rel_secret, secret: {"rel": rel_secret},  # ../ out of the root
    lambda job, rel_secret, secret: {"rel": str(secret)},  # an absolute path
    lambda job, rel_secret, secret: {"rel": f"{job}/../{rel_secret}"},  # in, then out
    lambda job, rel_secret, secret: {"rel": f"{job}/best_model.keras", "sha256": None},
    lambda job, rel_secret, secret: {"rel": f"{job}/best_model.keras", "sha256": "zz"},
    lambda job, rel_secret, secret: {"rel": f"{job}/best_model.keras", "size": "abc"},
    lambda job, rel_secret, secret: {"rel": "otherjob-abcdef/best_model.keras"},
], ids=["dotdot", "absolute", "in-then-out", "no-sha", "bad-sha", "bad-size", "other-job"])
def test_a_forged_index_entry_reads_no_file_outside_the_job(store: Store, chief: Path,
                                                            tmp_path: Path,
                                                            forged: Any) -> None:
    """A downloads entry written by whoever can write Redis must not make ``best
    --export`` / ``artifacts -o`` copy a file of the client's choosing: the path is
    confined to the job's directory under the client's artifacts root and the copy is
    verified against a well-formed sha256, else the entry is refused in one line."""
    job = _job(store)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    fields = forged(job, os.path.relpath(secret, chief), secret)
    _file(chief, job, "best_model.keras", BINARY)
    other = _file(chief, "otherjob-abcdef", "best_model.keras", SECRET)
    assert other.is_file()
    meta = {"path": str(secret), "rel": None, "size": len(SECRET),
            "sha256": hashlib.sha256(SECRET).hexdigest(), "published": False,
            "reason": "forged", **fields}
    store.client.hset(store.keys.downloads(job), "best_model.keras", json.dumps(meta))
    store.jobs.set_state(job, "finalizing")  # a job ends through finalize
    store.jobs.set_state(job, "completed")
    dest = tmp_path / "out" / "m.keras"
    dest.parent.mkdir()
    with pytest.raises(DownloadError) as info:
        downloads.retrieve(store, job, "best_model.keras", dest, chief)
    text = str(info.value)
    assert "\n" not in text and "best_model.keras" in text and "malformed" in text, text
    assert not dest.exists() and os.listdir(dest.parent) == []


def test_a_symlink_out_of_the_root_is_not_followed(store: Store, chief: Path,
                                                   tmp_path: Path) -> None:
    """Even a well-formed entry is read only from inside the client's root: a link
    planted in the job's directory to a file elsewhere (with that file's checksum)
    is not followed."""
    job = _job(store)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    (chief / job).mkdir(parents=True)
    (chief / job / "best_model.keras").symlink_to(secret)
    meta = {"path": "x", "rel": f"{job}/best_model.keras", "size": len(SECRET),
            "sha256": hashlib.sha256(SECRET).hexdigest(), "published": False,
            "reason": "forged"}
    store.client.hset(store.keys.downloads(job), "best_model.keras", json.dumps(meta))
    store.jobs.set_state(job, "finalizing")  # a job ends through finalize
    store.jobs.set_state(job, "completed")
    dest = tmp_path / "m.keras"
    with pytest.raises(DownloadError, match="outside"):
        downloads.retrieve(store, job, "best_model.keras", dest, chief)
    assert not dest.exists()


def test_the_cli_exports_no_file_a_forged_entry_points_at(store: Store, server: RedisServer,
                                                          chief: Path, tmp_path: Path) -> None:
    """The red team's reproduction, through the real CLI: ``artifacts -o`` and ``best
    --export`` with an entry whose rel climbs out of the artifacts root."""
    import subprocess
    import sys

    job = _job(store)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    meta = {"path": "x", "rel": os.path.relpath(secret, chief), "size": len(SECRET),
            "sha256": hashlib.sha256(SECRET).hexdigest(), "published": False, "reason": "x"}
    store.client.hset(store.keys.downloads(job), "results.json", json.dumps(meta))
    store.client.hset(store.keys.downloads(job), "best_model.keras", json.dumps(meta))
    store.jobs.set_state(job, "finalizing")  # a job ends through finalize
    store.jobs.set_state(job, "completed")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "tunecluster", "artifacts", job, "-o",
                           str(out), "--redis", server.url, "--artifacts", str(chief)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(errors) == 2 and all("malformed" in ln for ln in errors), done.stderr
    assert not any(p.is_file() for p in out.rglob("*")) if out.exists() else True
    assert "Traceback" not in done.stderr


def test_a_downloads_key_of_the_wrong_type_is_one_line(store: Store, tmp_path: Path) -> None:
    job = _job(store)
    store.client.set(store.keys.downloads(job), "not a hash")
    store.jobs.set_state(job, "finalizing")  # a job ends through finalize
    store.jobs.set_state(job, "completed")
    with pytest.raises(StoreError) as info:
        downloads.retrieve(store, job, "best_model.keras", tmp_path / "m.keras")
    assert "\n" not in str(info.value) and "expected a hash" in str(info.value)
