"""The commands on submitted jobs, through Redis: submit, status, list, watch, results,
best, artifacts, cancel, resume, delete."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from tunecluster import defaults, render
from tunecluster.cli.common import (
    checked_job_id,
    checked_trial_ids,
    handle_errors,
    json_option,
    local_artifacts_option,
    print_json,
    set_option,
)
from tunecluster.errors import ExitCode, SpecError
from tunecluster.follow import console
from tunecluster.options import redis_option
from tunecluster.states import JobState
from tunecluster.store.connection import redact


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@redis_option
@click.option("--wait", "wait_", is_flag=True,
              help="Wait for the job to end; the exit status says how it ended.")
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="With --wait: give up after seconds (the job keeps running).")
@json_option
@handle_errors
def submit(spec: str, overrides: tuple[str, ...], redis_url: str, wait_: bool,
           timeout_s: float | None, as_json: bool) -> None:
    """Validate and queue a job; prints its id."""
    from tunecluster.api import Client
    from tunecluster.follow import finish

    job = Client(redis_url).submit(spec if spec != "-" else _stdin_spec(), overrides)
    if not wait_:
        print_json({"job": job.id}) if as_json else click.echo(job.id)
        return
    finish(job.wait(timeout_s, raise_on_failure=False), as_json)


def _stdin_spec() -> dict[str, Any]:
    """The job file read from stdin, as a mapping: the Client resolves its relative paths
    (data, module) against the working directory, where a file's are against its folder."""
    from tunecluster.spec import parse_yaml

    return parse_yaml(sys.stdin.read(), "<stdin>")


@click.command()
@click.argument("job", required=False, callback=checked_job_id)
@redis_option
@json_option
@handle_errors
def status(job: str | None, redis_url: str, as_json: bool) -> None:
    """A job's state and trial counts; without JOB, every job and the live workers."""
    from tunecluster.api import Client

    client = Client(redis_url)
    if job is None:
        rows = client.summaries()  # a malformed job is a flagged row
        data = {"jobs": rows, **client.cluster(), "local_cluster": _local_cluster(redis_url)}
        workers = data["workers"]
        if as_json:
            print_json(data)
            return
        console.print(render.jobs_table(rows))
        for row in rows:
            if row.get("waiting"):
                console.print(f"[yellow]waiting:[/yellow] {row['job']}: {row['waiting']}")
        console.print(f"{len(workers)} live worker(s), "
                      f"{sum(w['slots'] for w in workers)} slot(s);"
                      f" chief: {data['chief'] or 'none'}")
        local = data["local_cluster"]
        if local is not None:
            running = local["running"]
            console.print(f"local cluster (tunecluster up): {local['url']}; redis pid"
                          f" {local['redis_pid']}, chief pid {local['chief_pid']}"
                          f"{'' if running['chief'] else ' (gone)'}, worker pids"
                          f" {', '.join(map(str, local['worker_pids'])) or '-'}"
                          f" ({sum(running['workers'])} running); artifacts"
                          f" {local['artifacts']}; logs {local['log_dir']}")
        return
    summary = client.job(job).status()
    if as_json:
        print_json(summary)
        return
    console.print(render.jobs_table([summary]))
    if summary.get("waiting"):
        console.print(f"[yellow]waiting:[/yellow] {summary['waiting']}")
    if summary.get("error"):
        console.print(f"[red]error:[/red] {summary['error']}")


def _local_cluster(redis_url: str) -> dict[str, Any] | None:
    """The record of `tunecluster up`'s cluster when ``redis_url`` is its Redis."""
    from tunecluster.cluster import persistent

    state = persistent.current()
    if state is None or state.url != redis_url:
        return None
    # the password stays in the 0600 record: output ends up in logs and CI transcripts
    return {**state.to_json(), "url": redact(state.url),
            "running": persistent.process_states(state)}


@click.command(name="list")
@redis_option
@json_option
@handle_errors
def list_jobs(redis_url: str, as_json: bool) -> None:
    """List jobs, newest first."""
    from tunecluster.api import Client

    rows = Client(redis_url).summaries()  # a malformed job is a flagged row
    print_json(rows) if as_json else console.print(render.jobs_table(rows))


@click.command()
@click.argument("job", callback=checked_job_id)
@redis_option
@handle_errors
def watch(job: str, redis_url: str) -> None:
    """Follow a job live: events, a trial table and a progress bar, until it ends; the
    exit status says how it ended."""
    from tunecluster.api import Client
    from tunecluster.follow import finish, watch_job

    handle = Client(redis_url).job(job)
    handle.record()  # "no job" before the live view starts
    watch_job(handle)
    finish(handle.results(), as_json=False)


@click.command()
@click.argument("job", callback=checked_job_id)
@redis_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@handle_errors
def results(job: str, redis_url: str, as_json: bool, as_csv: bool) -> None:
    """The leaderboard, best hyperparameters and the test-set score."""
    from tunecluster.api import Client

    if as_json and as_csv:
        raise SpecError("--json/--csv", "give one format, not both")
    data = Client(redis_url).job(job).results()
    if as_json:
        print_json(data)
    elif as_csv:
        click.echo(render.results_csv(data), nl=False)
    else:
        render.print_results(data, console)



@click.command()
@click.argument("job", callback=checked_job_id)
@redis_option
@click.option("--export", "export", type=click.Path(), help="Copy the best model here.")
@local_artifacts_option
@json_option
@handle_errors
def best(job: str, redis_url: str, export: str | None, local_root: str, as_json: bool) -> None:
    """The best trial; --export copies its model (a .keras file), from the artifacts
    root when this client sees it, else through Redis (stderr says which)."""
    from tunecluster.api import Client
    from tunecluster.artifacts import BEST_MODEL

    if export and Path(export).suffix and Path(export).suffix.lower() != ".keras" \
            and not Path(export).is_dir():
        # the file is a .keras archive whatever its name: model.h5 would not load as HDF5
        raise SpecError("--export", f"{export!r}: the best model is a .keras file; name a"
                                    " .keras file or a directory")
    handle = Client(redis_url).job(job)
    out = handle.best()
    if export:
        got = handle.download(BEST_MODEL, export, local_root)
        click.echo(got.message, err=True)
        out["exported"] = str(got.path.resolve())
        out["exported_from"] = got.source
    if as_json:
        print_json(out)
    else:
        click.echo(f"trial {out['trial']}: score {out['score']}  {out['hyperparameters']}")
        if export:
            click.echo(f"exported to {out['exported']}")
        if out["input"]:
            click.echo(render.input_text(out["input"]))


@click.command(name="artifacts")
@click.argument("job", callback=checked_job_id)
@redis_option
@click.option("--trial", "trials", multiple=True, callback=checked_trial_ids,
              help="Only this trial's model (repeatable).")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Directory to write into, as <job dir>/ is laid out"
              " (results.json, best_model.keras, trials/<trial>/model.keras).")
@local_artifacts_option
@json_option
@handle_errors
def artifacts_cmd(job: str, redis_url: str, trials: tuple[str, ...], output: str,
                  local_root: str, as_json: bool) -> None:
    """A job's results.json, best model and top-k trial models (or --trial's): from the
    artifacts root when this client sees it, else through Redis; one stderr line each."""
    from tunecluster.api import Client
    from tunecluster.store import downloads

    handle = Client(redis_url).job(job)
    names = [downloads.trial_name(t) for t in trials] if trials else handle.artifact_names()
    rows, failed = [], 0
    for name in names:
        try:
            got = handle.download(name, Path(output) / name, local_root)
        except downloads.DownloadError as exc:
            click.echo(f"error: {str(exc).replace(chr(10), ' ')}", err=True)
            failed += 1
            continue
        click.echo(got.message, err=True)
        rows.append({"name": name, "path": str(got.path.resolve()), "from": got.source,
                     "size": got.size, "sha256": got.sha256})
    if as_json:
        print_json(rows)
    else:
        for row in rows:
            click.echo(row["path"])
    if failed:
        sys.exit(1)


@click.command()
@click.argument("job", callback=checked_job_id)
@redis_option
@click.option("--wait", "wait_", is_flag=True, help="Wait until the job has ended.")
@handle_errors
def cancel(job: str, redis_url: str, wait_: bool) -> None:
    """Cancel a job: running trials stop within an epoch; completed ones are kept."""
    from tunecluster.api import Client

    handle = Client(redis_url).job(job)
    before = handle.cancel()
    if before in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
        click.echo(f"{job} already {before}")
        return
    click.echo(f"cancelling {job}")
    if wait_:  # cancelled is what was asked for: exit 0, whatever the end
        click.echo(handle.wait(raise_on_failure=False)["state"])


@click.command()
@click.argument("job", callback=checked_job_id)
@redis_option
@set_option
@click.option("--wait", "wait_", is_flag=True, help="Wait until the job has ended.")
@handle_errors
def resume(job: str, redis_url: str, overrides: tuple[str, ...], wait_: bool) -> None:
    """Continue a finished job's search: --set search.max_trials=N (its oracle and
    trials go on where they ended)."""
    from tunecluster.api import Client
    from tunecluster.errors import SpecError

    max_trials = None
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() != "search.max_trials" or not value.strip().isdigit():
            raise SpecError("--set", f"{item!r}: resume takes search.max_trials=N only")
        max_trials = int(value)
    handle = Client(redis_url).job(job)
    before = handle.resume(max_trials)
    if handle.resumed_after is None:
        click.echo(f"{job} already {before}")
        return
    click.echo(f"resuming {job} (was {before})")
    if wait_:
        state = handle.wait(raise_on_failure=False)["state"]
        click.echo(state)
        sys.exit(ExitCode.for_state(state))


@click.command()
@click.argument("job", callback=checked_job_id)
@redis_option
@click.option("--force", is_flag=True, help="Cancel an active job first, then delete it.")
@click.option("--artifacts", "with_artifacts", is_flag=True,
              help="Also remove the job's directory and file cache under the artifacts root"
                   " (a directory, or every object under s3://.../<job>/).")
@click.option("--artifacts-root", envvar=defaults.ARTIFACTS_ENV,
              default=defaults.ARTIFACTS_ROOT, show_default=True,
              help="Artifacts root (with --artifacts).")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
              help="With --force: seconds to wait for the job to end.")
@handle_errors
def delete(job: str, redis_url: str, force: bool, with_artifacts: bool, artifacts_root: str,
           timeout_s: float) -> None:
    """Delete a finished job: every Redis key it made (and, with --artifacts, its files)."""
    from tunecluster.api import Client

    handle = Client(redis_url).job(job)
    state = handle.delete(force, timeout_s,
                          artifacts_root=artifacts_root if with_artifacts else None)
    click.echo(f"deleted {job}" + (f" ({state})" if state else "")
               + "".join(f"; removed {p}" for p in handle.removed))


COMMANDS = (submit, status, list_jobs, watch, results, best, artifacts_cmd, cancel, resume,
            delete)
