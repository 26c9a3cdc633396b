"""The artifacts layout on disk (a local dir, a shared volume or a PVC), in one place.

    <root>/<job>/trials/<trial>/last.npz          checkpoint of the last finished epoch:
                                                  weights + its epoch and metric history
    <root>/<job>/trials/<trial>/model.keras       the trial's model at its best epoch
    <root>/<job>/best_model.keras                 the job's best model (exported)
    <root>/<job>/results.json                     the job's results document
    <root>/.cache/<job>/files/...                 data files uploaded with the job
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunecluster.store import Store

CHECKPOINT = "last.npz"
MODEL_FILE = "model.keras"
BEST_MODEL = "best_model.keras"
RESULTS = "results.json"


def job_dir(root: str | Path, job: str) -> Path:
    return Path(root) / job


def trial_dir(root: str | Path, job: str, trial: str) -> Path:
    return Path(root) / job / "trials" / trial


def file_resolver(store: Store, job: str, root: str | Path,
                  uploaded: list[str]) -> Callable[[str], str]:
    """Map a data path named in the job to a local file, fetching uploaded ones once."""
    from tunecluster.store import raw_client

    cache = Path(root) / ".cache" / job / "files"
    raw = None

    def resolve(path: str) -> str:
        nonlocal raw
        if path not in uploaded:
            return path  # too large to upload: must be on a filesystem every worker sees
        digest = hashlib.sha256(path.encode()).hexdigest()[:12]
        local = cache / digest / Path(path).name
        if not local.is_file():
            raw = raw or raw_client(store.client)
            data = store.jobs.file(raw, job, path)
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, local)
        return str(local)

    return resolve
