"""What the CLI does on the user's side: prepare a job (validate, discover the search
space, gather files), submit it, and wait for it. Nothing is queued unless all of
preparation succeeded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecluster import defaults
from tunecluster.errors import SpecError, TrialFailed, WaitTimeout
from tunecluster.spec import JobSpec, load_spec_file, spec_to_json
from tunecluster.store import FINAL_STATES, Store
from tunecluster.store.results import build_results


@dataclass
class PreparedJob:
    spec: JobSpec
    space: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


def prepare_job(path: str | Path, overrides: Iterable[str] = (), *,
                discover: bool = True) -> PreparedJob:
    spec = load_spec_file(path, overrides)
    files = gather_files(spec)
    check_data(spec, files)
    return PreparedJob(spec, search_space(spec, discover=discover), files)


def check_data(spec: JobSpec, files: dict[str, bytes]) -> None:
    """Read the job's data files once here, as every worker will, so that data no worker
    could use (a missing column, a missing value, too few rows to split) is refused at
    submit in one line, before anything is queued. Files too large to travel are left to
    the workers (they are read there, under the data root); named datasets too."""
    named = spec.data_files
    if spec.data is None or not named or any(p not in files for p in named):
        return
    from tunecluster.data import DataError, load_splits

    try:
        load_splits(spec.data, spec.model.task)
    except DataError as exc:
        raise SpecError("data", str(exc)) from None


def search_space(spec: JobSpec, *, discover: bool = True,
                 files: dict[str, bytes] | None = None) -> dict[str, Any]:
    """The job's space as KerasTuner config; a custom model's ``build_model`` adds its
    own (a ``build_model(hp, data)`` is given the job's training split, read from the
    data files here or from ``files``, the uploads given as bytes)."""
    import tempfile

    from tunecluster.spec.space import space_config

    if not spec.model.is_builtin and discover:
        from tunecluster.models.custom import discover_space_isolated

        # In a process of its own, with a limit: user code must not hang or crash submit.
        with tempfile.TemporaryDirectory(prefix="tunecluster-discover-") as tmp:
            paths = {}
            for i, (name, blob) in enumerate((files or {}).items()):
                if not Path(name).is_file():  # given as bytes only: a file for the child
                    paths[name] = str(Path(tmp) / f"{i}{Path(name).suffix}")
                    Path(paths[name]).write_bytes(blob)
            try:
                return discover_space_isolated(spec.model, data=spec.data, files=paths,
                                               objective=objective_names(spec))
            except TrialFailed as exc:
                raise SpecError("model.module", str(exc)) from None
    # KerasTuner's own config, written without importing it (and so TensorFlow): a
    # builtin job is prepared in milliseconds (spec/space.py).
    return space_config(spec.model.hyperparameters)


def gather_files(spec: JobSpec) -> dict[str, bytes]:
    """Data files small enough to travel with the job (see defaults.MAX_UPLOAD_BYTES)."""
    files = {}
    for p in spec.data_files:
        path = Path(p)
        if not path.is_file():
            raise SpecError("data.path" if spec.data and spec.data.path else "data.files",
                            f"{p!r} does not exist")
        if path.stat().st_size <= defaults.MAX_UPLOAD_BYTES:
            files[p] = path.read_bytes()
        else:  # workers read it from their own disk, and only under their data root
            logging.getLogger("tunecluster.api").warning(
                "%s is over %d MiB: not uploaded; every worker must see it at this path,"
                " under its $%s", p, defaults.MAX_UPLOAD_BYTES // 2**20, defaults.DATA_ROOT_ENV)
    return files


def submit(store: Store, job: PreparedJob) -> str:
    if job.spec.warm_start is not None:
        check_warm_start(store, job.spec)
    return store.jobs.submit(job.spec.name, spec_to_json(job.spec), job.space,
                             job.spec.priority, job.spec.scheduler, job.files)


def wait(store: Store, job: str, timeout_s: float | None = None,
         poll_s: float = 0.5) -> dict[str, Any]:
    """Block until the job is final; returns its results document, whatever the job's
    end (``Job.wait`` raises for a job that did not complete); ``WaitTimeout`` after
    ``timeout_s`` seconds."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    after = "0-0"
    while True:
        record = store.jobs.get(job)
        if record.state in FINAL_STATES:
            return build_results(store.jobs, job)
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"job {job} still {record.state} after {timeout_s:g} s (it"
                              " keeps running)")
        events = store.events.read(job, after, block_ms=int(poll_s * 1000), count=1000)
        if events:
            after = events[-1].id


def objective_names(spec: JobSpec) -> list[str]:
    """The metric names a job's objective reads: its own, or a multi-objective's parts."""
    parts = spec.search.objective_parts
    return [n for n, _ in parts] if parts else [spec.search.objective_name]


def check_warm_start(store: Store, spec: JobSpec) -> None:
    """``warm_start.from`` must name a final job of this cluster with the same objective."""
    from tunecluster.errors import StoreError
    from tunecluster.spec import parse_spec

    assert spec.warm_start is not None
    source = spec.warm_start.from_
    try:
        record = store.jobs.get(source)
    except StoreError:
        raise SpecError("warm_start.from", f"no job {source!r} on this cluster") from None
    if record.state not in FINAL_STATES:
        raise SpecError("warm_start.from", f"job {source!r} is {record.state}; warm start"
                                           " reads a finished job (wait for it, or cancel it)")
    theirs = parse_spec(record.spec).search
    ours = spec.search
    if (theirs.objective_name, theirs.direction) != (ours.objective_name, ours.direction):
        raise SpecError("warm_start.from", f"job {source!r} optimized {theirs.objective_name}"
                                           f" ({theirs.direction}), this job"
                                           f" {ours.objective_name} ({ours.direction})")
