"""The index of a job's downloads (``tc:job:<job>:downloads``), validated on read.

The chief writes one entry per artifact name; anyone who can write Redis can write one
too, so an entry is trusted only as far as it is checked here: a file it names has a
size and a sha256 to verify it by, and its path stays inside the job's own directory.
A bad entry is that name's error (``{"malformed": why}``), never a path to read.
"""

from __future__ import annotations

import re
from typing import Any

from tunecluster.artifacts import BEST_MODEL, RESULTS
from tunecluster.errors import StoreError
from tunecluster.ids import TRIAL_ID_RE, check_trial_id
from tunecluster.store import codec
from tunecluster.store.records import read_hash


def trial_name(trial: str) -> str:
    """The download name of a trial's model."""
    return f"trials/{check_trial_id(trial)}/model.keras"


def is_name(name: str) -> bool:
    """Whether ``name`` is an artifact name (it becomes a path under the client's -o)."""
    if name in (RESULTS, BEST_MODEL):
        return True
    parts = name.split("/")
    return (len(parts) == 3 and parts[0] == "trials" and parts[2] == "model.keras"
            and TRIAL_ID_RE.fullmatch(parts[1]) is not None)


def index(store: Any, job: str) -> dict[str, dict[str, Any]]:
    """The job's published artifacts: name -> size, sha256, path on the chief, rel
    (relative to the artifacts root), published, reason (why not), trial, rank.
    An entry that is not what the chief writes (anyone who can write Redis can write
    one) is ``{"malformed": why}``: ``retrieve`` refuses it, nothing reads its path;
    an index that is no hash is ``MalformedRecord`` (one line)."""
    out: dict[str, dict[str, Any]] = {}
    entries = read_hash(store.client, store.keys.downloads(job), f"job {job}'s downloads")
    for name, value in entries.items():
        try:
            meta = codec.loads_object(value, f"download entry {name}")
            out[name] = checked_entry(job, name, meta)
        except (ValueError, StoreError) as exc:
            out[name] = {"malformed": str(exc)[:200]}
    return out


SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TEXT_LIMIT = 600  # path and reason are only shown: bounded, one line


def checked_entry(job: str, name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` as the chief writes it, else ``ValueError`` saying what is wrong: a
    checksum of 64 hex digits and a size for every file it names, and a ``rel`` that
    stays inside the job's own directory (``<job>/...``; a trial's under
    ``<job>/trials/<trial>/``), so a forged entry cannot point a client at another file."""
    size, sha, rel = meta.get("size"), meta.get("sha256"), meta.get("rel")
    if size is not None and (type(size) is not int or size < 0):
        raise ValueError(f"size {str(size)[:20]!r} is not a number of bytes")
    if sha is not None and not (isinstance(sha, str) and SHA256_RE.fullmatch(sha)):
        raise ValueError(f"sha256 {str(sha)[:20]!r} is not 64 hex digits")
    if not isinstance(meta.get("published", False), bool):
        raise ValueError("published is not true or false")
    if (meta.get("published") or rel is not None) and (size is None or sha is None):
        raise ValueError("it names a file but no size and sha256 to verify it by")
    if rel is not None:
        _check_rel(job, name, rel)
    rank = meta.get("rank")
    clean = {**meta, "rank": rank if type(rank) is int else None}
    for key in ("path", "reason", "trial"):
        value = meta.get(key)
        clean[key] = None if value is None else \
            "".join(c if c.isprintable() else "?" for c in str(value))[:_TEXT_LIMIT]
    return clean


def _check_rel(job: str, name: str, rel: object) -> None:
    if not isinstance(rel, str):
        raise ValueError("rel is not a path")
    parts = rel.split("/")
    inside = [job, "trials", name.split("/")[1]] if name.startswith("trials/") else [job]
    if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts) \
            or parts[:len(inside)] != inside or len(parts) <= len(inside):
        raise ValueError(f"rel {rel[:80]!r} is not under {'/'.join(inside)}/")


__all__ = ["SHA256_RE", "checked_entry", "index", "is_name", "trial_name"]
