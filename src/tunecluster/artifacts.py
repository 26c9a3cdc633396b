"""The artifacts layout on disk (a local dir, a shared volume or a PVC), in one place.

    <root>/<job>/trials/<trial>/attempt-<n>-<t>/last.npz     checkpoint of the last
                                                  finished epoch: weights, epoch, history
    <root>/<job>/trials/<trial>/attempt-<n>-<t>/model.keras  the trial's model at its
                                                  best epoch; the trial record's
                                                  ``model`` field names the run's file
    (<n>: the attempt number, <t>: when Redis started that run, in ms. Each run writes
    only its own directory: a reaped attempt that still runs never touches its
    successor's files, nor does a run whose claim Redis lost in a rollback touch the
    run that claimed the trial again under the same number. Ray trials and older jobs
    use <trial>/ itself; jobs of an older version, attempt-<n>/.)
    <root>/<job>/best_model.keras                 the job's best model (exported)
    <root>/<job>/results.json                     the job's results document
    <root>/.cache/<job>/files/...                 data files uploaded with the job

The root is a directory or an object store (``artifact_store``): with ``s3://...`` the
paths here are laid out under a local staging directory, and ``open_store(root)`` turns
them into the store's keys (uploaded data caches stay local to each host).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tunecluster import defaults
from tunecluster.artifact_store import is_url, open_store
from tunecluster.errors import StoreError
from tunecluster.ids import check_job_id, check_trial_id, is_job_id

if TYPE_CHECKING:
    from tunecluster.store import Store

CHECKPOINT = "last.npz"
MODEL_FILE = "model.keras"
BEST_MODEL = "best_model.keras"
RESULTS = "results.json"


def job_dir(root: str | Path, job: str) -> Path:
    """``<root>/<job>``; an id that could leave the root (it came from Redis) raises
    ``StoreError`` (``ids.InvalidId``)."""
    return Path(root) / check_job_id(job)


def trial_dir(root: str | Path, job: str, trial: str) -> Path:
    return job_dir(root, job) / "trials" / check_trial_id(trial)


_RUN_DIR = re.compile(r"attempt-([0-9]{1,9})(?:-([0-9]{1,20}))?")


def attempt_dir(trial_path: Path, attempt: int, started: str = "") -> Path:
    """Where one run of a trial writes its checkpoint and model: ``attempt-<n>-<t>``,
    its attempt number and its start (Redis's ms clock, the claim's ``started``);
    ``attempt-<n>`` for a run that has no start time."""
    name = f"attempt-{int(attempt)}"
    return trial_path / (f"{name}-{int(started)}" if started else name)


def resume_dirs(trial_path: Path, attempt: int, names: Iterable[str]) -> list[Path]:
    """Of the directories ``names`` in ``trial_path``, those whose checkpoint a run of
    ``attempt`` may resume from, newest first, then the trial directory itself (files
    of a job started before per-attempt directories).

    Newest first: the higher attempt number, then the later start. Its own number
    counts (a run released without spending an attempt, e.g. on a worker's shutdown,
    shares it and is dead by then); a higher one does not (not an earlier run of this
    trial as Redis knows it).
    """
    runs = []
    for name in set(names):
        match = _RUN_DIR.fullmatch(name)
        if match and int(match[1]) <= int(attempt):
            runs.append((int(match[1]), int(match[2] or -1), name))
    return [trial_path / name for *_, name in sorted(runs, reverse=True)] + [trial_path]


def trial_model(root: str | Path, job: str, trial: str, recorded: str | None = None) -> Path:
    """The model file of a finished trial: the one its record names (``model``, relative
    to the artifacts root), else ``<trial>/model.keras`` (Ray trials, older records).
    A recorded path that leaves the trial's directory is ignored."""
    base = trial_dir(root, job, trial)
    if recorded:
        path = (Path(root) / recorded).resolve()
        if path.is_relative_to(base.resolve()):
            return path
    return base / MODEL_FILE


def relative_to_root(root: str | Path, path: str | Path) -> str:
    """``path`` as recorded in Redis: relative to the artifacts root, which may be
    mounted elsewhere on the chief than on the worker."""
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()


def file_resolver(store: Store, job: str, root: str | Path,
                  uploaded: list[str]) -> Callable[[str], str]:
    """Map a data path named in the job to a local file: an uploaded one is fetched from
    Redis once into this host's cache; any other must pass ``data_path``."""
    cache = file_cache_dir(root, job) / "files"
    raw = None

    def resolve(path: str) -> str:
        nonlocal raw
        if path not in uploaded:
            return data_path(path)
        local = cache / hashlib.sha256(path.encode()).hexdigest()[:12] / _cache_name(path)
        if local.is_file():
            os.utime(local)  # recently used: prune_file_caches keeps it
        else:
            raw = raw or store.raw()
            data = store.jobs.file(raw, job, path)
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, local)
        return str(local)

    return resolve


def data_path(path: str) -> str:
    """A data file that was not uploaded with its job, if the operator allows reading it.

    Only files under ``$TUNECLUSTER_DATA_ROOT`` (symlinks resolved; a relative path is
    taken relative to it) are read; without that variable none are. The error names
    the path and the variable, never anything the file holds.
    """
    from tunecluster.data.registry import DataError

    env = defaults.DATA_ROOT_ENV
    root_text = os.environ.get(env, "").strip()
    if not root_text:
        raise DataError(f"data file {path!r} was not uploaded with the job (over"
                        f" {defaults.MAX_UPLOAD_BYTES // 2**20} MiB, or submitted without it)"
                        f" and this host reads no other files: set {env} to a directory"
                        " that holds it on every worker")
    root = Path(root_text).resolve()
    real = (root / path).resolve()  # an absolute ``path`` replaces ``root`` here
    if not real.is_relative_to(root):
        raise DataError(f"data file {path!r} is outside the data root {env}={root}")
    return str(real)


def _cache_name(path: str) -> str:
    """The cached copy keeps the file's name (errors name it) when that name is safe."""
    name = Path(path).name
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name):
        return name
    suffix = Path(path).suffix.lower()
    return "data" + (suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else "")


def file_cache_dir(root: str | Path, job: str) -> Path:
    return Path(root) / ".cache" / check_job_id(job)


def prune_file_caches(root: str | Path, active: Iterable[str],
                      keep: int = defaults.FILE_CACHE_JOBS, idle_s: float = 60.0) -> list[str]:
    """Bound this host's cache of uploaded files; returns the job ids whose cache went.

    Caches of jobs not in ``active`` go (their files were freed from Redis too). Of the
    rest, the ``keep`` most recently used stay, and so does any used in the last
    ``idle_s``: another trial process on this host (or this volume) may be reading it;
    a removed cache of an active job is fetched again from Redis when needed.
    Symlinks are removed, never followed.
    """
    base = Path(root) / ".cache"
    if not base.is_dir():
        return []
    live = set(active)
    now = time.time()
    entries = []
    removed = []
    for entry in list(base.iterdir()):
        if entry.is_symlink() or not entry.is_dir():
            if entry.is_symlink():
                entry.unlink(missing_ok=True)
                removed.append(entry.name)
            continue
        if not is_job_id(entry.name):
            continue  # not ours: leave it
        if entry.name not in live:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        else:
            entries.append((_last_used(entry), entry))
    entries.sort(reverse=True)
    for used, entry in entries[keep:]:
        if now - used > idle_s:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _last_used(directory: Path) -> float:
    """Newest mtime of the cached files (``resolve`` touches a file on every use)."""
    times = []
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            try:
                times.append(os.stat(os.path.join(dirpath, name)).st_mtime)
            except OSError:  # removed meanwhile by another process pruning
                continue
    return max(times, default=0.0)


def job_artifact_dirs(root: str | Path, job: str) -> list[Path]:
    """``<root>/<job>`` and the job's file cache, checked for deletion: a symlink in
    their place is refused (``StoreError``), so deleting never reaches outside the root
    (``shutil.rmtree`` itself removes links inside a tree without following them).
    An object store has neither links nor a shared cache: nothing to check."""
    if is_url(root):
        check_job_id(job)
        return []
    paths = [job_dir(root, job), file_cache_dir(root, job)]
    for path in paths:
        if path.is_symlink():
            raise StoreError(f"{path} is a symlink; refusing to delete outside the"
                             " artifacts root (remove it by hand)")
    return paths


def remove_job_artifacts(root: str | Path, job: str) -> list[Path | str]:
    """Remove ``<root>/<job>`` and the job's file cache; returns what was removed.
    Idempotent; refuses symlinks before removing anything (``job_artifact_dirs``).
    For an object store: every object under ``<root>/<job>/`` (the URL, if any)."""
    if is_url(root):
        store = open_store(root)
        return [store.url(check_job_id(job))] if store.delete_prefix(job) else []
    removed: list[Path | str] = []
    for path in job_artifact_dirs(root, job):
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
    return removed
