"""A drop-in project on disk: ``directory/project_name/tunecluster_job.json`` names the
project's job on its cluster (where KerasTuner keeps its oracle), so that a tuner
re-created with ``overwrite=False`` reattaches to it, as KerasTuner's reload does."""

from __future__ import annotations

import re
from pathlib import Path

PROJECT_FILE = "tunecluster_job.json"


def project_file(directory: str, project_name: str) -> Path:
    """``directory/project_name/tunecluster_job.json``: the project's job on its cluster
    (where KerasTuner keeps its oracle), so a tuner re-created with ``overwrite=False``
    reattaches to it."""
    return Path(directory, project_name, PROJECT_FILE)


def read_project(directory: str, project_name: str, tuner: str) -> str | None:
    """The project's job id, or None; ``RuntimeError`` (KerasTuner's) when the project
    was made by another tuner class: its oracle is not this one's."""
    import json

    from tunecluster.ids import is_job_id

    path = project_file(directory, project_name)
    try:
        saved = json.loads(path.read_text())
        job, made_by = saved.get("job"), saved.get("tuner")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(made_by, str) and made_by != tuner:
        raise RuntimeError(
            f"Error reloading `Oracle` from existing project: it was made by {made_by}, not"
            f" {tuner}. If you did not mean to reload from an existing project, change the"
            f" `project_name` or pass `overwrite=True` when creating the `Tuner`. Found"
            f" existing project at: {path.parent}")
    return job if isinstance(job, str) and is_job_id(job) else None


def write_project(directory: str, project_name: str, job: str, tuner: str) -> None:
    import json

    path = project_file(directory, project_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"job": job, "tuner": tuner}) + "\n")
    tmp.replace(path)


def job_name(project_name: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", project_name.lower()).strip("-._")[:63]
    return name or "search"
