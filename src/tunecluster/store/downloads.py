"""A job's results and models published through Redis, for clients that cannot read
the artifacts store (a laptop outside the cluster, the host of a compose stack).

Contract:
- What: at finalize the chief publishes ``results.json``, ``best_model.keras`` (completed
  jobs) and the models of the ``$TUNECLUSTER_DOWNLOAD_TOP_K`` (3) best trials, named
  ``trials/<trial>/model.keras``. Names are paths relative to ``<artifacts>/<job>/``.
- Bounded: a file over ``$TUNECLUSTER_MAX_DOWNLOAD_BYTES`` (64 MiB; read by the chief
  when it publishes) is indexed (size, sha256, where it is, why) but not published.
  Blobs are content addressed, so identical files (the best model is a copy of the
  best trial's) are held once: at most top-k + 1 models and results.json per job.
  Nor is a file published that would take Redis past half its ``maxmemory``, and one
  that Redis refuses (OOM) is recorded as not published: downloads never fail a job.
- Fenced and atomic: ``publish`` runs before the job's final step and pushes each
  file's chunks (~1 MiB) to the LIST ``download:<sha256>:part`` by a script that checks
  the chief lock, so a deposed chief writes nothing; ``Publication.stage`` then adds to
  the chief's final, fenced ``Writes`` the renames of the parts and the new index
  (``downloads``: name -> JSON). A reader that sees the job final sees the whole index,
  and an indexed blob is whole. Idempotent: a chief restarted mid-finalize uploads
  nothing already there; blobs only the old index named are dropped in the same step.
- Retention: every key is under the job's prefix ``tc:job:<job>:`` and goes with
  ``JobStore.delete``; nothing expires before.
- Reading (``retrieve`` / ``fetch``): the client's own view of the artifacts store
  (``local_root``: a directory, or an ``s3://`` URL this client has credentials for)
  when it holds the same file (size and sha256 verified), else the
  published copy streamed (LINDEX, a chunk at a time) to a temporary file next to
  ``dest``, verified and renamed into place: ``dest`` is the whole verified file or
  untouched. ``Fetched.message`` says which, in one line. Failures are
  ``DownloadError`` (a ``StoreError``), one line that says where the file is and why this
  client cannot read it; "no ... yet" only while the job has not ended.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tunecluster import defaults
from tunecluster.artifact_store import is_url, open_store
from tunecluster.artifacts import BEST_MODEL, RESULTS, relative_to_root, trial_model
from tunecluster.errors import StoreError
from tunecluster.states import JobState, TrialState
from tunecluster.store import codec
from tunecluster.store.connection import raw_client, script
from tunecluster.store.download_index import SHA256_RE, index, is_name, trial_name
from tunecluster.store.fence import Fence, LostLeadership, Writes

# A blob is a LIST of chunks: each is one allocation of its own size (an APPENDed string
# would grow by doubling: 64 MiB cost 81 MiB), a little under 1 MiB so that with its
# header it fits jemalloc's 1 MiB size class.
CHUNK_BYTES = 1024 * 1024 - 1024
# Published downloads never take Redis past this share of its maxmemory (if it has one).
DOWNLOAD_MEMORY_SHARE = 0.5

# KEYS: lock ('' = unfenced), part | ARGV: token, chunk, index (chunks already written).
# Index 0 starts the part afresh (a deposed chief's half-written part is dropped); a
# chunk re-sent after a dropped connection is recognised by the length it left.
# Returns -1 when fenced out, -2 when the part does not hold ``index`` chunks, else
# the number of chunks it holds.
_PUSH = """
if KEYS[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local index = tonumber(ARGV[3])
if index == 0 then redis.call('DEL', KEYS[2]) end
local have = redis.call('LLEN', KEYS[2])
if have == index + 1 then return have end
if have ~= index then return -2 end
return redis.call('RPUSH', KEYS[2], ARGV[2])
"""


class DownloadError(StoreError):
    """An artifact cannot be delivered to this client; the message says where it is."""


class ChecksumMismatch(DownloadError):
    """What was read is not the file the chief published; nothing was written."""


def max_download_bytes() -> int:
    """The per-file publishing limit (``$TUNECLUSTER_MAX_DOWNLOAD_BYTES``; 0: none)."""
    return _env_int(defaults.MAX_DOWNLOAD_BYTES_ENV, defaults.MAX_DOWNLOAD_BYTES)


def download_top_k() -> int:
    """How many of the best trials' models are published (``$TUNECLUSTER_DOWNLOAD_TOP_K``)."""
    return _env_int(defaults.DOWNLOAD_TOP_K_ENV, defaults.DOWNLOAD_TOP_K)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    try:
        value = int(text) if text else default
    except ValueError:
        raise ValueError(f"${name}={text!r} is not a whole number of"
                         f" {'bytes' if 'BYTES' in name else 'trials'}") from None
    if value < 0:
        raise ValueError(f"${name}={text!r} must be 0 or more")
    return value


# --- publishing (the chief) ------------------------------------------------------------


@dataclass
class Publication:
    """What ``publish`` uploaded; ``stage`` puts it in place within the chief's step."""

    job: str
    index: dict[str, dict[str, Any]]
    uploaded: list[str] = field(default_factory=list)  # sha256 of parts to rename
    dropped: list[str] = field(default_factory=list)  # sha256 of parts Redis refused
    stale: list[str] = field(default_factory=list)  # sha256 of blobs no entry names now

    def stage(self, writes: Writes, keys: Any) -> Writes:
        """Add the renames, the dropped blobs and the new index to ``writes``."""
        writes.extend(["RENAME", keys.download_part(self.job, sha),
                       keys.download_blob(self.job, sha)] for sha in self.uploaded)
        writes.delete(*(keys.download_blob(self.job, sha) for sha in self.stale))
        writes.delete(*(keys.download_part(self.job, sha) for sha in self.dropped))
        writes.delete(keys.downloads(self.job))
        return writes.hset(keys.downloads(self.job), mapping={
            name: codec.dumps(meta) for name, meta in self.index.items()})


def publish(store: Any, job: str, root: str | Path, files: Iterable[tuple[str, Path]],
            fence: Fence = Fence.NONE, extra: dict[str, dict[str, Any]] | None = None,
            limit: int | None = None) -> Publication:
    """Hash ``files`` (name, path on the chief), upload under ``fence`` those within the
    limit and not yet in Redis; returns the ``Publication`` to stage. ``LostLeadership``
    when fenced out (nothing of this call then lands)."""
    limit = max_download_bytes() if limit is None else limit
    keys = store.keys
    raw = raw_client(store.client)
    try:
        old = {_meta_sha(v) for v in raw.hvals(keys.downloads(job))} - {None}
        pub = Publication(job, {})
        for name, path in files:
            meta = _describe(root, path, limit)
            meta.update({"name": name, **(extra or {}).get(name, {})})
            pub.index[name] = meta
            sha = meta.get("sha256")
            if not meta["published"] or sha in pub.uploaded:
                continue
            blob = keys.download_blob(job, sha)
            if raw.exists(blob):
                continue  # published by an earlier run (content addressed: the same)
            refused = _no_room(raw, meta["size"])
            if refused is None:
                try:
                    _upload(raw, keys.download_part(job, sha), path, meta["size"], fence)
                    pub.uploaded.append(sha)
                    continue
                except (redis.ResponseError, DownloadError) as exc:  # e.g. OOM: not fatal
                    refused = f"Redis did not take it ({str(exc).splitlines()[0][:160]})"
                    pub.dropped.append(sha)
            # The job's results do not depend on its downloads: record why, go on.
            meta.update(published=False, reason=refused)
        live = {m.get("sha256") for m in pub.index.values() if m["published"]}
        pub.stale = sorted(old - live)
        return pub
    finally:
        raw.close()


def _meta_sha(value: bytes) -> str | None:
    try:
        meta = codec.loads_object(value.decode(), "download entry")
    except (ValueError, StoreError, UnicodeDecodeError):
        return None
    sha = meta.get("sha256") if meta.get("published") else None
    return sha if isinstance(sha, str) and SHA256_RE.fullmatch(sha) else None


def _describe(root: str | Path, path: Path, limit: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"path": str(Path(path).resolve()), "rel": None}
    try:
        meta["rel"] = relative_to_root(root, path)
    except ValueError:
        pass
    if not Path(path).is_file():  # nothing to verify, so nothing for a client to read
        return {**meta, "rel": None, "size": None, "sha256": None, "published": False,
                "reason": "the chief found no such file"}
    size, sha = _digest(Path(path))
    meta.update(size=size, sha256=sha, published=True, reason=None)
    if limit and size > limit:
        meta.update(published=False, reason=(
            f"over the download limit ({_human(size)} > {defaults.MAX_DOWNLOAD_BYTES_ENV}="
            f"{limit} on the chief)"))
    return meta


def _no_room(raw: redis.Redis, size: int) -> str | None:
    """Why a file of ``size`` must not be published now: downloads may take Redis's
    memory up to ``DOWNLOAD_MEMORY_SHARE`` of ``maxmemory``, never the control plane's
    room (under ``noeviction`` a full Redis refuses every write)."""
    info = raw.info("memory")
    cap = int(info.get("maxmemory") or 0)
    used = int(info.get("used_memory") or 0)
    if cap and used + size > cap * DOWNLOAD_MEMORY_SHARE:
        return (f"Redis has no room for it ({_human(used)} used + {_human(size)} would pass"
                f" {DOWNLOAD_MEMORY_SHARE:.0%} of its maxmemory {_human(cap)}; delete old"
                " jobs or raise maxmemory)")
    return None


def _upload(raw: redis.Redis, part: str, path: Path, size: int, fence: Fence) -> None:
    push = script(raw, _PUSH)
    index = written = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(CHUNK_BYTES)
            if not chunk and index:
                break
            answer = int(push(keys=[fence.lock_key, part], args=[fence.token, chunk, index]))
            if answer == -1:
                raise LostLeadership("the chief lock is held by another chief; nothing"
                                     " published")
            if answer == -2:
                raise DownloadError(f"publishing {path}: the part in Redis does not hold"
                                    f" {index} chunks (another writer?)")
            index += 1
            written += len(chunk)
            if not chunk:
                break  # an empty file: one empty chunk (an empty list is no key)
    if written != size:
        raise DownloadError(f"publishing {path}: it changed while being published"
                            f" ({size} bytes, then {written})")


# --- reading (any client) ---------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    path: Path
    source: str  # "local" (the client's artifacts store) or "redis" (downloaded)
    message: str  # one line: what was read from where, and whether it was verified
    size: int
    sha256: str | None


def names(store: Any, job: str) -> list[str]:
    """What ``artifacts`` fetches: the indexed names (results.json, the best model, then
    the trials by rank); results.json and the best model when nothing is indexed, so that
    the errors tell why. A name that is no artifact name (foreign data) is skipped."""
    store.jobs.get(job)  # StoreError "no job" first
    found = {n: m for n, m in index(store, job).items() if is_name(n)}
    if not found:
        return [RESULTS, BEST_MODEL]
    fixed = [n for n in (RESULTS, BEST_MODEL) if n in found]
    trials = sorted((n for n in found if n not in fixed),
                    key=lambda n: (found[n].get("rank") or 1e9, n))
    return fixed + trials


def fetch(store: Any, job: str, name: str, dest: str | Path,
          local_root: str | Path | None = None) -> Path:
    """``retrieve`` for callers that only want the path (the Python client)."""
    return retrieve(store, job, name, dest, local_root).path


def retrieve(store: Any, job: str, name: str, dest: str | Path,
             local_root: str | Path | None = None) -> Fetched:
    """Put the job's artifact ``name`` at ``dest``: from ``local_root`` (this client's
    view of the artifacts store) when it holds the same file, else through Redis; a
    ``dest`` that is a directory gets the file under its own name.
    ``DownloadError`` (one line) when neither can deliver it."""
    if not is_name(name):
        raise DownloadError(f"{name!r} is not an artifact name ({RESULTS}, {BEST_MODEL}"
                            " or trials/<trial>/model.keras)")
    dest = Path(dest)
    if dest.is_dir():  # `--export DIR/`: the file keeps its name
        dest = dest / Path(name).name
    meta = index(store, job).get(name)
    if meta is None:
        return _unindexed(store, job, name, dest, local_root)
    if "malformed" in meta:
        raise DownloadError(f"job {job}'s download entry for {name} is malformed"
                            f" ({meta['malformed']}); refused: the chief writes no such"
                            " entry, so someone else wrote to Redis")
    why_not_local: str | None = None
    if local_root and is_url(str(local_root)) and meta.get("rel"):
        url = open_store(str(local_root)).url(meta["rel"])
        why_not_local = _from_object_store(str(local_root), meta, dest)
        if why_not_local is None:
            return Fetched(dest, "local", f"{name}: read from the artifacts store at {url}"
                           " (sha256 verified)", meta["size"], meta["sha256"])
        local_root = None
    local = _inside(Path(local_root), job, meta["rel"]) if local_root and meta.get("rel") \
        else None
    if why_not_local is None:
        why_not_local = "this client has no artifacts root" if local is None else \
            f"{local} does not exist here"
    if local is not None and local.is_file():
        try:
            _copy_verified(local, dest, meta["size"], meta["sha256"])
            return Fetched(dest, "local", f"{name}: read from the artifacts store at {local}"
                           " (sha256 verified)", meta["size"], meta["sha256"])
        except ChecksumMismatch:
            why_not_local = f"{local} is not the job's file (sha256 differs)"
    if meta.get("published"):
        _download(store, job, name, meta, dest)
        return Fetched(dest, "redis", f"{name}: downloaded through Redis"
                       f" ({_human(meta['size'])}, sha256 verified; {why_not_local})",
                       meta["size"], meta["sha256"])
    size = f" ({_human(meta['size'])})" if meta.get("size") is not None else ""
    raise DownloadError(
        f"job {job}'s {name}{size} is not published for download: {meta.get('reason')};"
        f" it is at {meta.get('path')} on the chief's artifacts store and {why_not_local}:"
        f" {_how_to_reach(meta.get('path'))}")


def _inside(root: Path, job: str, rel: str) -> Path:
    """``root/rel``, which must really be inside ``root/job`` (a link planted there that
    leads elsewhere is not followed)."""
    path = root / rel
    if path.exists() and not path.resolve().is_relative_to((root / job).resolve()):
        raise DownloadError(f"{path} leads outside job {job}'s directory"
                            f" ({path.resolve()}); refusing to read it")
    return path


def _from_object_store(root: str, meta: dict[str, Any], dest: Path) -> str | None:
    """Copy ``meta``'s file from the object store ``root`` to ``dest`` (verified): None
    when done, else why not, in a few words (the caller then goes through Redis)."""
    artifacts = open_store(root)
    url = artifacts.url(meta["rel"])
    try:
        with artifacts.local_copy(meta["rel"]) as path:
            if path is None:
                return f"{url} does not exist"
            _copy_verified(path, dest, meta["size"], meta["sha256"])
            return None
    except ChecksumMismatch:
        return f"{url} is not the job's file (sha256 differs)"
    except Exception as exc:  # noqa: BLE001 - no credentials, denied, unreachable: say so
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        return f"{url} cannot be read by this client ({type(exc).__name__}: {first})"


def _how_to_reach(path: str | None) -> str:
    if path and is_url(path):
        return ("read it with credentials for that object store (--artifacts set to its"
                f" root, or: aws s3 cp {path} .)")
    return ("read it where that store is mounted (--artifacts ROOT, the root that holds"
            " <job>/), or copy it out of the cluster (docker compose cp"
            f" chief:{path} . ; kubectl cp POD:{path} .)")


def _unindexed(store: Any, job: str, name: str, dest: Path,
               local_root: str | Path | None) -> Fetched:
    """Nothing published under ``name``: the job has not ended, it has no such file, or
    it ended before downloads existed (or the trial is not among the top k). A copy
    under ``local_root`` is still used, unverified (no checksum was recorded)."""
    record = store.jobs.get(job)  # StoreError "no job" when there is none
    state = record.state
    final = codec.loads(record.fields.get("final") or "{}", "final")
    final = final if isinstance(final, dict) else {}
    chief_dir = (final.get("artifacts") or {}).get("dir")
    trial = name.split("/")[1] if name.startswith("trials/") else None
    what = f"trial {trial}'s model" if trial else name
    if not state.is_final:
        noun = "exported model" if name == BEST_MODEL else what
        raise DownloadError(f"job {job} has no {noun} yet (state {state})")
    if name == BEST_MODEL and state != JobState.COMPLETED:
        error = f": {record.fields.get('error')}" if record.fields.get("error") else ""
        raise DownloadError(f"job {job} has no exported model: it ended {state}{error}"[:600])
    row: dict[str, str] = {}
    if trial is not None:
        row = store.jobs.trial(job, trial)
        if row.get("state") != TrialState.COMPLETED:
            raise DownloadError(f"trial {trial} of job {job} has no model (state"
                                f" {row.get('state', 'unknown: no such trial')})")
    local = None
    here = "this client has no artifacts root"
    if local_root and is_url(str(local_root)):  # an object store this client may read
        bucket = open_store(str(local_root))
        staged = trial_model(bucket.local, job, trial, row.get("model")) if trial else \
            bucket.local / job / name
        meta = {"rel": bucket.key(staged), "size": None, "sha256": None}
        why = _from_object_store(str(local_root), meta, dest)
        if why is None:
            return Fetched(dest, "local", f"{name}: read from the artifacts store at"
                           f" {bucket.url(meta['rel'])} (not verified: no checksum was"
                           " published for it)", dest.stat().st_size, None)
        here, local_root = why, None
    if local_root:
        local = trial_model(local_root, job, trial, row.get("model")) if trial else \
            Path(local_root) / job / name
        here = f"{local} does not exist here"
    if local is not None and local.is_file():
        size = _copy_verified(local, dest, None, None)
        return Fetched(dest, "local", f"{name}: read from the artifacts store at {local}"
                       " (not verified: no checksum was published for it)", size, None)
    chief_path = _chief_path(chief_dir, job, trial, row.get("model"), name)
    reason = (f"only the best {download_top_k()} trials' models are"
              f" ({defaults.DOWNLOAD_TOP_K_ENV} on the chief)" if trial
              else "the job ended before its chief published downloads")
    raise DownloadError(f"job {job}'s {what} is not published for download ({reason}); it"
                        f" is at {chief_path} on the chief's artifacts store and {here}:"
                        f" {_how_to_reach(chief_path)}")


def _chief_path(chief_dir: str | None, job: str, trial: str | None,
                recorded: str | None, name: str) -> str:
    if not chief_dir:
        return f"<artifacts>/{job}/{name}"
    if is_url(chief_dir):  # s3://bucket/prefix/<job>: no Path (it would fold the //)
        root = chief_dir.rstrip("/").rsplit("/", 1)[0]
        return f"{root}/{recorded}" if trial and recorded else f"{chief_dir}/{name}"
    if trial and recorded:
        return str(Path(chief_dir).parent / recorded)
    return str(Path(chief_dir) / name)


def _download(store: Any, job: str, name: str, meta: dict[str, Any], dest: Path) -> None:
    blob = store.keys.download_blob(job, meta["sha256"])
    raw = raw_client(store.client)
    try:
        if not raw.exists(blob):
            raise DownloadError(f"job {job}'s {name} is indexed but its published"
                                " copy is gone from Redis (the job is being deleted?)")

        def chunks() -> Iterable[bytes]:
            for i in range(int(raw.llen(blob))):
                yield bytes(raw.lindex(blob, i) or b"")

        _write_verified(chunks(), dest, meta["size"], meta["sha256"],
                        f"the copy of job {job}'s {name} in Redis ({blob})")
    finally:
        raw.close()


def _copy_verified(source: Path, dest: Path, size: int | None, sha: str | None) -> int:
    """Copy ``source`` to ``dest`` atomically, checking size and sha256 when given."""
    if dest.exists() and dest.resolve() == source.resolve():
        got_size, got_sha = _digest(source)
        if sha is not None and (got_size, got_sha) != (size, sha):
            raise ChecksumMismatch(f"{source} does not match its published sha256")
        return got_size

    def chunks() -> Iterable[bytes]:
        with open(source, "rb") as handle:
            while block := handle.read(CHUNK_BYTES):
                yield block

    return _write_verified(chunks(), dest, size, sha, str(source))


def _write_verified(chunks: Iterable[bytes], dest: Path, size: int | None, sha: str | None,
                    what: str) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    written = 0
    try:
        with open(tmp, "wb") as out:
            for block in chunks:
                digest.update(block)
                out.write(block)
                written += len(block)
        if sha is not None and (written != size or digest.hexdigest() != sha):
            raise ChecksumMismatch(
                f"{what} fails its checksum ({written} bytes, sha256 {digest.hexdigest()[:12]}…;"
                f" published: {size} bytes, sha256 {sha[:12]}…); {dest} was not written")
        os.replace(tmp, dest)
        return written
    finally:
        tmp.unlink(missing_ok=True)


def _digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _human(size: int | None) -> str:
    if size is None:
        return "unknown size"
    if size < 1024:
        return f"{size} bytes"
    return f"{size / 2**10:.1f} KiB" if size < 2**20 else f"{size / 2**20:.1f} MiB"


__all__ = ["BEST_MODEL", "CHUNK_BYTES", "RESULTS", "ChecksumMismatch", "DownloadError",
           "Fetched", "Publication", "download_top_k", "fetch", "index", "is_name",
           "max_download_bytes", "names", "publish", "retrieve", "trial_name"]
