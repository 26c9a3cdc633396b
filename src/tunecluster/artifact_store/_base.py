"""The artifact store's contract: where checkpoints, trial models and results live.

Contract:
- Keys are POSIX paths relative to the store's root, as the layout in ``artifacts``
  builds them (``<job>/trials/<trial>/attempt-<n>/last.npz``); a key never leaves the
  root (``..``, an absolute path: ``ValueError`` naming the key).
- Every store has a ``local`` directory on this host: the root itself for a directory
  store, a staging directory for an object store. Code lays files out under ``local``
  as it always has (temporary files, uploaded data caches) and names them to the store
  by ``key(path)``.
- Writes are atomic: ``move_in``, ``put_bytes`` and ``copy`` make the whole new content
  visible at once, or leave the old one (a temporary file + ``os.replace`` on a
  directory; one PUT, a multipart upload completed at once, or a server-side copy on
  S3). A reader never sees a torn checkpoint or model.
- Reads hand Keras and NumPy a local file: ``local_copy`` yields the file itself (a
  directory) or a temporary download removed afterwards (an object store), or None
  when the key does not exist. ``get_file`` copies to a given path atomically.
- ``delete_prefix`` removes every key under a directory-like prefix (``<job>``, never
  ``<job>0``); idempotent, returns what it removed.
- Credentials come from the environment and the provider's config chain, never from a
  job spec.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from tunecluster.errors import ArtifactsError


class ArtifactStore(ABC):
    """One artifacts root: a directory (``LocalStore``) or an object store (``S3Store``)."""

    #: this host's directory for the root: the root itself, or a staging directory
    local: Path

    @property
    def remote(self) -> bool:
        """Whether the files live elsewhere than ``local`` (an object store)."""
        return False

    def key(self, path: str | Path) -> str:
        """The key of a file laid out under ``local``."""
        return Path(path).resolve().relative_to(self.local.resolve()).as_posix()

    @staticmethod
    def check_key(key: str) -> str:
        parts = PurePosixPath(key).parts
        if not key or key.startswith("/") or ".." in parts or "\\" in key:
            raise ArtifactsError(f"artifact key {key!r} leaves the artifacts root")
        return key

    @abstractmethod
    def url(self, key: str = "") -> str:
        """Where ``key`` is, for messages and records (a path or ``s3://...``)."""

    @abstractmethod
    def move_in(self, src: Path, key: str) -> None:
        """Put the local file ``src`` at ``key`` atomically; ``src`` is consumed."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically."""

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> bool:
        """Copy ``key`` to the local ``dest`` atomically; False when there is no such key."""

    @abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Copy one key to another atomically (``FileNotFoundError`` when ``src`` is absent)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` is a stored file."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key under the directory-like ``prefix``, sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> list[str]:
        """Remove every key under ``prefix``; returns the keys removed (idempotent)."""

    def read_bytes(self, key: str) -> bytes | None:
        with self.local_copy(key) as path:
            return None if path is None else path.read_bytes()

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path | None]:
        """A local file with ``key``'s content while the block runs, or None if absent."""
        self.local.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".get-", dir=self.local) as tmp:
            dest = Path(tmp) / PurePosixPath(self.check_key(key)).name
            yield dest if self.get_file(key, dest) else None

    def _temp_beside(self, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
