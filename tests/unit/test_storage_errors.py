"""Which trial errors are its artifacts store's (worker/storage.py): retried, not the
trial's failure. Access errors count only for files under the store's root; errors of
the device (full, read-only, I/O) count wherever; a wrapped one is found through its
cause; anything else is the trial's own."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from tunecluster.worker.storage import storage_error, wait_until_writable


def test_an_access_error_under_the_root_is_the_stores(tmp_path: Path) -> None:
    exc = PermissionError(errno.EPERM, "Operation not permitted", str(tmp_path / "j" / "x"))
    assert storage_error(exc, tmp_path) is exc


def test_an_access_error_elsewhere_is_the_trials(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    root.mkdir()
    assert storage_error(PermissionError(errno.EACCES, "denied", "/etc/shadow"), root) is None
    assert storage_error(PermissionError(errno.EACCES, "denied"), root) is None  # no file
    outside = tmp_path / "artifacts-other" / "x"  # a sibling that shares the prefix
    assert storage_error(PermissionError(errno.EACCES, "denied", str(outside)), root) is None


def test_device_errors_are_the_stores_wherever_they_happen(tmp_path: Path) -> None:
    for code in (errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT):
        exc = OSError(code, os.strerror(code))
        assert storage_error(exc, tmp_path) is exc


def test_a_wrapped_store_error_is_found_through_its_cause(tmp_path: Path) -> None:
    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise inner
        except OSError as exc:
            raise ValueError("Keras could not save the model") from exc
    except ValueError as outer:
        assert storage_error(outer, tmp_path) is inner


def test_other_errors_are_the_trials(tmp_path: Path) -> None:
    assert storage_error(ValueError("bad shape"), tmp_path) is None
    assert storage_error(FileNotFoundError(errno.ENOENT, "gone", str(tmp_path / "x")),
                         tmp_path) is None
    assert storage_error(MemoryError(), tmp_path) is None


def test_wait_until_writable(tmp_path: Path) -> None:
    assert wait_until_writable(tmp_path / "new" / "dir", 0.0)
    assert list((tmp_path / "new" / "dir").iterdir()) == []  # the probe is removed
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")
    assert not wait_until_writable(blocker / "sub", 0.3, poll_s=0.1)
