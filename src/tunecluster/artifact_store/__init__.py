"""Where artifacts live: a directory or an object store, chosen by the root's form.

``$TUNECLUSTER_ARTIFACTS`` / ``--artifacts`` is a path (a local disk, a shared volume)
or an ``s3://bucket/prefix`` URL. Every process turns it into a local root with
``local_root`` once (the directory itself; for a URL, a staging directory that
``open_store`` maps back to the URL) and lays files out under it as ``artifacts``
describes; ``open_store(root)`` gives the store that holds them.

    ArtifactStore   the contract (_base.py)
    LocalStore      a directory: temporary file + os.replace
    S3Store         S3-compatible object storage through fsspec/s3fs
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from tunecluster.artifact_store._base import ArtifactStore
from tunecluster.artifact_store._local import LocalStore
from tunecluster.artifact_store._s3 import S3Store, endpoint_url
from tunecluster.errors import ArtifactsError

STAGING_ENV = "TUNECLUSTER_ARTIFACTS_STAGING"
SCHEMES = ("s3://",)

# local root (resolved) -> the object store it stands for, in this process
_mounted: dict[Path, ArtifactStore] = {}


def is_url(root: str | Path) -> bool:
    """Whether ``root`` names an object store rather than a directory."""
    return isinstance(root, str) and "://" in root


def local_root(root: str | Path) -> Path:
    """This process's directory for ``root``: the directory itself, or for an object
    store URL a staging directory (``$TUNECLUSTER_ARTIFACTS_STAGING``, else
    ``<tmp>/tunecluster-<hash of the URL>``) from then on mapped to that store."""
    if not is_url(root):
        return Path(root).resolve()
    url = str(root).rstrip("/")
    if not url.startswith(SCHEMES):
        raise ArtifactsError(f"artifacts root {root!r}: an object store URL must start with"
                             f" {' or '.join(SCHEMES)}; anything else is taken as a directory")
    staging = os.environ.get(STAGING_ENV, "").strip()
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    local = Path(staging or Path(tempfile.gettempdir()) / f"tunecluster-{digest}").resolve()
    local.mkdir(parents=True, exist_ok=True)
    if local not in _mounted:
        _mounted[local] = S3Store(url, local)
    return local


def open_store(root: str | Path) -> ArtifactStore:
    """The store behind ``root``: a URL, a staging directory ``local_root`` made for
    one, or a directory."""
    if is_url(root):
        return _mounted[local_root(root)]
    path = Path(root).resolve()
    return _mounted.get(path) or LocalStore(path)


__all__ = ["ArtifactStore", "LocalStore", "S3Store", "STAGING_ENV", "endpoint_url",
           "is_url", "local_root", "open_store"]
