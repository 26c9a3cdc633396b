"""An S3-compatible object store as the artifacts store (AWS S3, MinIO, Ceph RGW, GCS
interoperability), through fsspec and s3fs (``pip install 'tunecluster[s3]'``).

Credentials and endpoint come from the environment / config chain that botocore reads
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``AWS_PROFILE`` and ``~/.aws``, an instance or pod role); the endpoint of a non-AWS
service from ``$TUNECLUSTER_S3_ENDPOINT_URL``, else ``$AWS_ENDPOINT_URL_S3`` /
``$AWS_ENDPOINT_URL``. Nothing comes from a job spec.

Atomicity: an object appears whole or not at all. A file is uploaded with one PUT
(or, over s3fs's block size, a multipart upload that S3 makes visible only when it
completes) straight to its final key; a copy is server-side.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunecluster.artifact_store._base import ArtifactStore
from tunecluster.errors import ArtifactsError

ENDPOINT_ENVS = ("TUNECLUSTER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def endpoint_url() -> str | None:
    """The S3 endpoint this process uses (None: AWS's own, from region)."""
    for name in ENDPOINT_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class S3Store(ArtifactStore):
    """Keys are objects under ``s3://bucket/prefix/``."""

    def __init__(self, url: str, local: str | Path) -> None:
        if not url.startswith("s3://") or not url[5:].strip("/"):
            raise ArtifactsError(f"artifacts URL {url!r} is not s3://bucket[/prefix]")
        self.base = url[5:].strip("/")  # bucket[/prefix]
        self.local = Path(local).resolve()
        self._fs: Any = None

    @property
    def remote(self) -> bool:
        return True

    @property
    def fs(self) -> Any:
        if self._fs is None:
            try:
                import s3fs
            except ImportError:
                raise ImportError("an s3:// artifacts root needs s3fs:"
                                  " pip install 'tunecluster[s3]'") from None
            endpoint = endpoint_url()
            # No listing cache: other processes write the same prefixes. No instance
            # cache: a store is opened once per process and never shared across forks.
            self._fs = s3fs.S3FileSystem(
                use_listings_cache=False, skip_instance_cache=True,
                client_kwargs={"endpoint_url": endpoint} if endpoint else {})
        return self._fs

    def _path(self, key: str) -> str:
        return f"{self.base}/{self.check_key(key)}"

    def url(self, key: str = "") -> str:
        return f"s3://{self._path(key)}" if key else f"s3://{self.base}"

    @contextmanager
    def _naming(self, key: str) -> Iterator[None]:
        """s3fs's errors (no such bucket, access denied) say what, not where: add it."""
        try:
            yield
        except OSError as exc:
            raise type(exc)(f"{self.url(key)}: {exc}") from exc

    def move_in(self, src: Path, key: str) -> None:
        try:
            with self._naming(key):
                self.fs.put_file(str(src), self._path(key))
        finally:
            Path(src).unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._naming(key):
            self.fs.pipe_file(self._path(key), data)

    def get_file(self, key: str, dest: Path) -> bool:
        tmp = self._temp_beside(Path(dest))
        try:
            self.fs.get_file(self._path(key), str(tmp))
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, dest)
        return True

    def copy(self, src: str, dst: str) -> None:
        with self._naming(src):
            self.fs.copy(self._path(src), self._path(dst))

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix).rstrip("/") if prefix else self.base
        try:
            found = self.fs.find(base + "/")
        except FileNotFoundError:
            return []
        start = len(self.base) + 1
        return sorted(p[start:] for p in found if p.startswith(base + "/"))

    def delete_prefix(self, prefix: str) -> list[str]:
        keys = self.list(prefix)
        if keys:
            self.fs.rm([self._path(k) for k in keys])
        return keys
