"""Submitting a YAML job from the dashboard, validated exactly as the CLI does.

The text is written to a file in a fresh, empty directory and submitted through the
library's own ``Client.submit`` in this process (the CLI's ``tunecluster submit`` is the
same call): the same validation, search-space discovery and queueing as at a terminal.
A bad job is refused with the CLI's one line (``FIELD: ...``); nothing is queued.

Jobs that name files (``data.path``, ``data.files``) or carry code (``model.source``,
``model.module``: any model but a builtin one) are refused first: files would be read
from the dashboard's own disk, which is not the submitter's, and code would run in the
dashboard's process, which holds the Redis URL with its password. A builtin model's
search space is written without KerasTuner (``spec/space.py``), so the dashboard never
imports TensorFlow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tunecluster.errors import SpecError, StoreError

if TYPE_CHECKING:
    from tunecluster.spec.models import JobSpec

MAX_YAML_BYTES = 256 * 1024
ORIGIN = "job.yaml"  # what errors call the submitted text (the CLI names its file)


# Every spec field that names a file on the dashboard's disk or carries code the
# dashboard would run (spec/models.py: Data, Model; ray.address is refused by the spec itself).
FILE_FIELDS = (("data", "path"), ("data", "files"))
CODE_FIELDS = (("model", "source"), ("model", "module"))
REFUSED = ("the dashboard submits jobs on named datasets with built-in models only"
           " (model.builtin); submit jobs with files or code with `tunecluster submit FILE`")


def check_no_files(text: str) -> None:
    """``SpecError`` naming the field for a job that names files (they would come from
    this machine) or carries code (it would run here); checked on the raw YAML, before
    the loader reads ``model.module`` into ``model.source``."""
    from tunecluster.spec.load import parse_yaml

    raw = parse_yaml(text, ORIGIN)
    for section, key in (*CODE_FIELDS, *FILE_FIELDS):
        value = raw.get(section)
        if isinstance(value, dict) and value.get(key) is not None:
            raise SpecError(f"{section}.{key}", REFUSED)


def check_builtin(spec: JobSpec) -> None:
    """The validated spec again: whatever the YAML looked like, its model is builtin."""
    if not spec.model.is_builtin or spec.model.source is not None:
        raise SpecError("model.source" if spec.model.source is not None else "model.module",
                        REFUSED)


def submit_yaml(text: str, redis_url: str) -> str:
    """Validate and queue the job ``text``; returns its id. ``SpecError`` (one line, the
    CLI's) for a bad job, ``StoreError`` when the cluster refuses or cannot be reached."""
    import redis

    from tunecluster.api import Client
    from tunecluster.spec.load import load_spec_file
    from tunecluster.store import AuthFailed, redact

    if len(text.encode()) > MAX_YAML_BYTES:
        raise SpecError("", f"the job is larger than {MAX_YAML_BYTES // 1024} KiB")
    check_no_files(text)
    with tempfile.TemporaryDirectory(prefix="tc-dashboard-submit-") as tmp:
        path = Path(tmp) / ORIGIN
        path.write_text(text)
        try:
            spec = load_spec_file(path)  # the CLI's loader: SpecError at once
            check_builtin(spec)  # before preparing: no code is imported to find a space
            return Client(redis_url).submit(spec).id
        except SpecError as exc:
            raise SpecError(exc.path, exc.message.replace(str(path), ORIGIN)) from None
        except AuthFailed as exc:
            raise StoreError(str(exc)) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreError(f"cannot reach Redis at {redact(redis_url)} ({exc})") from None
