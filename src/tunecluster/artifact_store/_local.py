"""A directory as the artifacts store: a local disk, a shared volume or a PVC."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunecluster.artifact_store._base import ArtifactStore
from tunecluster.errors import ArtifactsError


class LocalStore(ArtifactStore):
    """Keys are files under ``root``; writes are a temporary file + ``os.replace``."""

    def __init__(self, root: str | Path) -> None:
        self.local = Path(root).resolve()

    def path(self, key: str) -> Path:
        return self.local / self.check_key(key)

    def url(self, key: str = "") -> str:
        return str(self.path(key)) if key else str(self.local)

    def move_in(self, src: Path, key: str) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self.path(key)
        tmp = self._temp_beside(dest)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        finally:  # nothing half-written is left beside a write that failed
            tmp.unlink(missing_ok=True)

    def get_file(self, key: str, dest: Path) -> bool:
        src = self.path(key)
        if not src.is_file():
            return False
        tmp = self._temp_beside(Path(dest))
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        return True

    def copy(self, src: str, dst: str) -> None:
        source = self.path(src)
        if not source.is_file():
            raise FileNotFoundError(f"no artifact at {source}")
        target = self.path(dst)
        tmp = self._temp_beside(target)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.path(prefix) if prefix else self.local
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.local).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.is_symlink())

    def delete_prefix(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if base.is_symlink():  # never follow a link out of the root
            raise ArtifactsError(f"{base} is a symlink; refusing to delete outside the"
                                 " artifacts root (remove it by hand)")
        keys = self.list(prefix)
        if base.is_dir():
            shutil.rmtree(base)
        return keys

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path | None]:
        path = self.path(key)
        yield path if path.is_file() else None  # the file itself: no copy
