"""The CLI following a job: ``run`` end to end, ``watch``, the waits of ``submit --wait``
and ``resume --wait``, and the exit status each ends with (``errors.ExitCode``).

A command that waits for a job exits with the code of the job's end: 0 completed,
``JOB_FAILED``, ``JOB_CANCELLED``, ``TIMED_OUT``; the reason is one stderr line. Ctrl-C
in ``run`` cancels the job it started and says so (``INTERRUPTED``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn

from tunecluster import render
from tunecluster.errors import ExitCode
from tunecluster.states import JobState, TrialState

# Piped output (CI logs, `| less`) gets a wide table instead of rich's 80 columns.
# soft_wrap: a line of text (an error, an event) is never broken up by the terminal's
# width or the 140 columns given to pipes and logs, which are grepped line by line;
# tables still fit the width.
console = Console(width=None if sys.stdout.isatty() else 140, soft_wrap=True)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140, soft_wrap=True)

CANCEL_WAIT_S = 30.0  # Ctrl-C on the `up` cluster: how long the trials get to stop


class Interrupted(Exception):
    """Ctrl-C while ``run`` followed ``job`` (None: before it was submitted); the job was
    asked to cancel and ended ``state`` (None: not seen final)."""

    def __init__(self, job: str | None, state: str | None) -> None:
        self.job, self.state = job, state
        super().__init__(job)


def finish(results: dict[str, Any], as_json: bool) -> None:
    """Print a final job's results and exit with the code of its end (one stderr line
    for a job that did not complete)."""
    if as_json:
        click.echo(json.dumps(results, indent=2, default=str))
    else:
        render.print_results(results, console)
    sys.stdout.flush()
    code = ExitCode.for_state(results["state"])
    if code != ExitCode.OK:
        reason = str(results.get("error") or "").replace("\n", " ").strip()
        click.echo(f"job {results['job']} {results['state']}"
                   + (f": {reason}" if reason else ""), err=True)
        raise click.exceptions.Exit(int(code))


def interrupted_line(exc: Interrupted, where: str) -> str:
    """What ``run`` says on Ctrl-C: what became of the job and of the processes."""
    if exc.job is None:
        return f"interrupted before a job was submitted; {where}"
    state = JobState.CANCELLED if exc.state in (None, JobState.CANCELLED) else f"ended {exc.state}"
    return f"interrupted: job {exc.job} {state}; {where}"


def run_on(url: str, spec: str, overrides: tuple[str, ...], timeout_s: float | None,
           as_json: bool, where: str, *, workers: int, fixed: bool = True) -> None:
    """Prepare, submit, follow and print a job on the cluster at ``url``, which has
    ``workers`` workers (``fixed``: and never more, an embedded cluster). Ctrl-C cancels
    the job (and, on a cluster that stays up, waits for it to end) and raises
    ``Interrupted``."""
    from tunecluster.api import Client
    from tunecluster.api.submission import prepare_job
    from tunecluster.store.connection import redact

    job_id = None
    try:
        job = prepare_job(spec, overrides)
        need = job.spec.resources.workers_per_trial
        if need > workers and fixed:  # its trials could never start
            raise ValueError(f"resources.workers_per_trial: each trial needs {need} workers;"
                             f" this run starts {workers} (--workers {need} or more)")
        if need > workers:
            err.print(f"note: each trial needs {need} workers and the local cluster has"
                      f" {workers}: the job waits until more join (tunecluster worker"
                      f" --redis {redact(url)})")
        handle = Client(url, retries=20).submit(job)
        job_id = handle.id
        if not as_json:
            err.print(f"submitted {job_id}: {where}")
            watch_job(handle)
        results = handle.wait(timeout_s, raise_on_failure=False)
    except KeyboardInterrupt:
        raise Interrupted(job_id, _cancel(url, job_id, wait_s=0 if fixed else CANCEL_WAIT_S)
                          if job_id else None) from None
    finish(results, as_json)


def _cancel(url: str, job: str, wait_s: float) -> str | None:
    """Cancel ``job``; wait up to ``wait_s`` for it to end (a second Ctrl-C stops the
    wait). Returns its final state, None when not seen final."""
    import redis

    from tunecluster.api import Client
    from tunecluster.store import FINAL_STATES

    try:
        handle = Client(url, retries=20).job(job)
        state = handle.cancel()
        deadline = time.monotonic() + wait_s
        while state not in FINAL_STATES and time.monotonic() < deadline:
            time.sleep(0.2)
            state = handle.state
        return state if state in FINAL_STATES else None
    except (redis.RedisError, KeyboardInterrupt):
        return None


@contextlib.contextmanager
def dashboard(url: str, wanted: bool, port: int) -> Iterator[None]:
    """Serve the dashboard (loopback) while the block runs; afterwards, at a terminal,
    keep it up until Ctrl-C so the final job can be looked at."""
    if not wanted:
        yield
        return
    from tunecluster.dashboard.server import start_in_background

    address, stop = start_in_background(url, "127.0.0.1", port)
    err.print(f"dashboard: {address}")
    try:
        yield
        if sys.stdin.isatty() and sys.stderr.isatty():
            err.print(f"the job is final; the dashboard stays at {address} until Ctrl-C")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    finally:
        stop()


def watch_job(handle: Any) -> None:
    """Events as they happen, under a live trial table and a progress bar, until the
    job (``tunecluster.Job``) is final."""
    from rich.console import Group

    from tunecluster.spec import parse_spec
    from tunecluster.store import FINAL_STATES

    job, store = handle.id, handle.client.store
    total = parse_spec(handle.record().spec).search.max_trials
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total} trials"), console=err)
    task = progress.add_task(job, total=total)
    after = "0-0"
    with Live(progress, console=err, refresh_per_second=4, transient=True) as live:
        while True:
            events = store.events.read(job, after, block_ms=500)
            for e in events:
                after = e.id
                if e.type != "trial_created":
                    live.console.print(render.event_line(job, e.type, e.data))
            results = handle.results()
            done = sum(t["state"] in (TrialState.COMPLETED, TrialState.FAILED, TrialState.CANCELLED)
                       for t in results["trials"])
            progress.update(task, completed=done)
            live.update(Group(render.leaderboard_table(results, limit=10), progress))
            if results["state"] in FINAL_STATES:
                break
