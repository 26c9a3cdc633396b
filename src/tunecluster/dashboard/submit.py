"""Submitting a YAML job from the dashboard, validated exactly as the CLI does.

The text is written to a file in a fresh, empty directory and handed to the CLI's own
``tunecluster submit FILE --json`` in a child process (the Redis URL through the
environment, never the command line): the same validation, search-space discovery and
queueing as at a terminal, and the dashboard process itself never imports TensorFlow
(which KerasTuner's search space needs). A bad job is refused with the CLI's one line
(``spec error: FIELD: ...``); nothing is queued.

Before that, and in this process, the spec is parsed with the same loader
(``spec.load.load_spec_file``), so a malformed job is answered at once; and jobs that
name files (``data.path``, ``data.files``) or carry code (``model.source``,
``model.module``: any model but a builtin one) are refused: files would be read from the
dashboard's own disk, which is not the submitter's, and code would run in the child
process, which holds the Redis URL with its password. The child's environment lacks the
dashboard's token all the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tunecluster.dashboard.auth import TOKEN_ENV
from tunecluster.errors import SpecError, StoreError

if TYPE_CHECKING:
    from tunecluster.spec.models import JobSpec

MAX_YAML_BYTES = 256 * 1024
ORIGIN = "job.yaml"  # what errors call the submitted text (the CLI names its file)
SUBMIT_TIMEOUT_S = 300.0


# Every spec field that names a file on the dashboard's disk or carries code the child
# would run (spec/models.py: Data, Model; ray.address is refused by the spec itself).
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


def submit_yaml(text: str, redis_url: str, timeout_s: float = SUBMIT_TIMEOUT_S) -> str:
    """Validate and queue the job ``text``; returns its id. ``SpecError`` (one line, the
    CLI's) for a bad job, ``StoreError`` when the cluster refuses or cannot be reached."""
    from tunecluster.spec.load import load_spec_file

    if len(text.encode()) > MAX_YAML_BYTES:
        raise SpecError("", f"the job is larger than {MAX_YAML_BYTES // 1024} KiB")
    check_no_files(text)
    with tempfile.TemporaryDirectory(prefix="tc-dashboard-submit-") as tmp:
        path = Path(tmp) / ORIGIN
        path.write_text(text)
        try:
            spec = load_spec_file(path)  # the CLI's loader: SpecError at once, no process
        except SpecError as exc:
            raise SpecError(exc.path, exc.message.replace(str(path), ORIGIN)) from None
        check_builtin(spec)
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        env.update({"TUNECLUSTER_REDIS_URL": redis_url, "TF_CPP_MIN_LOG_LEVEL": "2"})
        try:
            done = subprocess.run([sys.executable, "-m", "tunecluster", "submit", str(path),
                                   "--json"], capture_output=True, text=True, cwd=tmp,
                                  env=env, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise StoreError(f"submit took over {timeout_s:.0f}s; nothing may have been"
                             " queued (see the Jobs view)") from None
    lines = [ln.replace(str(path), ORIGIN) for ln in done.stderr.strip().splitlines()
             if ln.strip()]
    if done.returncode == 2:
        message = lines[-1] if lines else "spec error"
        raise SpecError("", message.removeprefix("spec error: "))
    if done.returncode != 0:
        message = lines[-1] if lines else f"submit exited with {done.returncode}"
        raise StoreError(message.removeprefix("error: "))
    try:
        return str(json.loads(done.stdout)["job"])
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"submit printed no job id: {done.stdout.strip()[:200]}") from None
