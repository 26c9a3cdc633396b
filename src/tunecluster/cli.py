"""The ``tunecluster`` command line: parse, delegate, print — no logic lives here."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import redis

from tunecluster import defaults, render
from tunecluster.errors import ExitCode, SpecError, StoreError, WaitTimeout
from tunecluster.follow import console, err
from tunecluster.states import JobState
from tunecluster.store.connection import redact

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _fail(message: str, code: int) -> None:
    click.echo(message.replace("\n", " "), err=True)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every failure becomes one line on stderr and an ``ExitCode``: USAGE for bad
    input, UNREACHABLE when Redis does not answer, TIMED_OUT for a --timeout, ERROR for
    the rest."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tunecluster.store import AuthFailed, redact

        try:
            return func(*args, **kwargs)
        except SpecError as exc:
            _fail(f"spec error: {exc}", ExitCode.USAGE)
        except AuthFailed as exc:
            _fail(f"error: {exc}", ExitCode.ERROR)
        except StoreError as exc:
            _fail(f"error: {exc}", ExitCode.ERROR)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            url = kwargs.get("redis_url") or defaults.REDIS_URL
            _fail(f"error: cannot reach Redis at {redact(url)} ({exc})", ExitCode.UNREACHABLE)
        except WaitTimeout as exc:
            _fail(f"error: {exc}", ExitCode.TIMED_OUT)
        except (FileNotFoundError, TimeoutError, ValueError) as exc:
            _fail(f"error: {exc}", ExitCode.ERROR)

    return wrapper


def _redis_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    """``--redis`` or its variable; else the local cluster of ``tunecluster up``, if one
    runs; else the default URL."""
    from tunecluster.cluster.persistent import resolve_url

    return resolve_url(value)


def redis_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--redis", "redis_url", envvar=defaults.REDIS_URL_ENV,
                        default=None, callback=_redis_url,
                        help=f"Redis URL (or ${defaults.REDIS_URL_ENV}); redis:// or"
                             " rediss://. Default: the local cluster of `tunecluster up`"
                             f" when one runs, else {defaults.REDIS_URL}")(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def set_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
                        help="Override a field of the job, e.g. search.max_trials=5.")(func)


def artifacts_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--artifacts", envvar=defaults.ARTIFACTS_ENV,
                        default=defaults.ARTIFACTS_ROOT, show_default=True,
                        help="Artifacts root shared by chief and workers: a directory, or"
                             " s3://bucket/prefix (credentials from the AWS chain).")(func)


def _job_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """JOB arguments become Redis keys and paths: anything but a job id is refused here,
    in one line (exit 2), before Redis is asked."""
    from tunecluster.ids import InvalidId, check_job_id

    try:
        return None if value is None else check_job_id(value, "JOB")
    except InvalidId as exc:
        _fail(f"error: {exc}", 2)
        raise  # not reached: _fail exits


def _trial_ids(_ctx: click.Context, _param: click.Parameter,
               values: tuple[str, ...]) -> tuple[str, ...]:
    """--trial values become paths too: refused as JOB is (exit 2), before Redis."""
    from tunecluster.ids import InvalidId, check_trial_id

    try:
        return tuple(check_trial_id(v, "--trial") for v in values)
    except InvalidId as exc:
        _fail(f"error: {exc}", 2)
        raise  # not reached: _fail exits


def _store(redis_url: str, patient: bool = False) -> Any:
    """Interactive commands fail fast; roles (chief, worker) ride out Redis restarts."""
    from tunecluster.store import Store

    return Store.from_url(redis_url, retries=20 if patient else 1)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group()
@click.version_option(package_name="tunecluster")
@click.option("-v", "--verbose", is_flag=True, help="Log what the roles do.")
def cli(verbose: bool) -> None:
    """Distributed hyperparameter tuning for Keras: KerasTuner oracles, warm workers, Redis."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


# --- jobs as files ----------------------------------------------------------------------


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@click.option("--no-build", is_flag=True, help="Do not import a custom model module.")
@handle_errors
def validate(spec: str, overrides: tuple[str, ...], no_build: bool) -> None:
    """Check a job file; exit 0 if valid, 2 with a one-line message if not."""
    from tunecluster.client import prepare_job

    job = prepare_job(spec, overrides, discover=not no_build)
    n = len(job.space.get("space", []))
    click.echo(f"ok: {job.spec.name} ({job.spec.search.algorithm} search over {n}"
               f" hyperparameter{'s' if n != 1 else ''}, objective"
               f" {job.spec.search.objective_name} {job.spec.search.direction})")


@cli.command()
def schema() -> None:
    """Print the job file's JSON Schema (for editor completion)."""
    from tunecluster.spec import JobSpec

    _print_json(JobSpec.model_json_schema(by_alias=True))


@cli.command()
@json_option
def datasets(as_json: bool) -> None:
    """List the named datasets."""
    from tunecluster.data import DATASETS

    rows = [{"name": d.name, "task": d.task, "embedded": d.embedded,
             "description": d.description} for d in DATASETS.values()]
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        where = "embedded" if r["embedded"] else "download"
        click.echo(f"{r['name']:<20} {r['task']:<15} {where:<9} {r['description']}")


# --- running ------------------------------------------------------------------------------


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--timeout", "timeout_s", type=float, default=None, help="Give up after seconds.")
@click.option("--dashboard", "dashboard_on", is_flag=True,
              help="Serve the web dashboard on 127.0.0.1 while the job runs; prints its URL.")
@click.option("--dashboard-port", type=click.IntRange(0, 65535), default=0,
              help="The dashboard's port (0: a free one).")
@artifacts_option
@json_option
@click.pass_context
@handle_errors
def run(ctx: click.Context, spec: str, overrides: tuple[str, ...], workers: int,
        timeout_s: float | None, dashboard_on: bool, dashboard_port: int, artifacts: str,
        as_json: bool) -> None:
    """Run a job: on the local cluster of `tunecluster up` when one runs (warm workers),
    else on an embedded one (its own Redis, a chief and N workers, stopped at the end).
    Exit status: the job's end (see the README); Ctrl-C cancels the job."""
    from tunecluster.cluster.persistent import current
    from tunecluster.follow import Interrupted, dashboard, interrupted_line, run_on

    warm = current()
    if warm is not None:
        given = [f"--{name}" for name in ("workers", "artifacts")
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            err.print(f"note: {' and '.join(given)} apply to an embedded cluster; the"
                      f" local cluster has {len(warm.worker_pids)} worker(s) and its"
                      f" artifacts at {warm.artifacts}")
        try:
            with dashboard(warm.url, dashboard_on, dashboard_port):
                run_on(warm.url, spec, overrides, timeout_s, as_json, "the local cluster",
                       workers=len(warm.worker_pids), fixed=False)
        except Interrupted as exc:
            _fail(interrupted_line(exc, "nothing of it runs on; the local cluster of"
                                        " `tunecluster up` stays up (tunecluster down)"),
                  ExitCode.INTERRUPTED)
        return
    from tunecluster.cluster import LocalCluster

    # The roles start first (Python, Redis, the trial processes' TensorFlow): the job is
    # prepared while they do.
    cluster = LocalCluster(workers=workers, artifacts=artifacts)
    try:
        try:
            cluster.start()
            with dashboard(cluster.url, dashboard_on, dashboard_port):
                run_on(cluster.url, spec, overrides, timeout_s, as_json,
                       f"{workers} workers, redis at {redact(cluster.url)}", workers=workers)
        finally:
            # The results are out (or the command gives up), and this cluster's Redis
            # goes with it: nothing is left for the roles to do or to hand over. Killed,
            # not asked to wind down, so the command returns at once.
            cluster.stop(fast=True)
    except (Interrupted, KeyboardInterrupt) as exc:
        got = exc if isinstance(exc, Interrupted) else Interrupted(None, None)
        _fail(interrupted_line(got, "the embedded cluster (Redis, chief, workers and"
                                    " their trials) is stopped: nothing is left running"),
              ExitCode.INTERRUPTED)


@cli.command()
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 64))
@click.option("--slots", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Trials at once per worker.")
@artifacts_option
@click.option("--wait", "wait_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the chief and the workers to register.")
@json_option
@handle_errors
def up(workers: int, slots: int, artifacts: str, wait_s: float, as_json: bool) -> None:
    """Start a local cluster in the background (Redis, a chief, N workers) that `run`,
    `submit`, the other commands and the Python API then use; `tunecluster down` stops
    it. Its record: ~/.tunecluster/cluster.json ($TUNECLUSTER_CLUSTER_FILE)."""
    from tunecluster.cluster import persistent

    try:
        state = persistent.up(workers, artifacts, slots=slots)
    except persistent.ClusterError as exc:
        _fail(f"error: {exc}", 1)
        return
    ready = _wait_ready(state.url, workers, wait_s)
    info = {**state.to_json(), "url": redact(state.url), "ready": ready,
            "state_file": str(persistent.state_file())}
    if as_json:
        _print_json(info)
        return
    click.echo(f"local cluster up: redis {redact(state.url)}, chief pid {state.chief_pid},"
               f" {workers} worker(s) (pids {', '.join(map(str, state.worker_pids)) or '-'}),"
               f" artifacts {state.artifacts}")
    if not ready:
        click.echo(f"warning: not every role registered within {wait_s:g} s; logs in"
                   f" {state.log_dir}", err=True)
    click.echo("stop it with: tunecluster down")


def _wait_ready(url: str, workers: int, wait_s: float) -> bool:
    """Until the chief's beat and ``workers`` workers' heartbeats are in Redis."""
    import time

    from tunecluster.store import Store

    store = Store.from_url(url)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            chief_ok = store.client.get(store.keys.chief_beat) is not None
            if chief_ok and len(store.workers.live(defaults.LEASE_S)) >= workers:
                return True
        except redis.RedisError:
            pass
        time.sleep(0.1)
    return False


@cli.command()
@handle_errors
def down() -> None:
    """Stop the local cluster of `tunecluster up`: every process it started."""
    from tunecluster.cluster import persistent

    try:
        state = persistent.down()
    except persistent.ClusterError as exc:
        _fail(f"error: {exc}", 1)
        return
    click.echo(f"local cluster down: stopped redis ({state.redis_pid}), chief"
               f" ({state.chief_pid}) and {len(state.worker_pids)} worker(s)"
               f" ({', '.join(map(str, state.worker_pids)) or '-'})")


@cli.command()
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
        _print_json({"job": job.id}) if as_json else click.echo(job.id)
        return
    finish(job.wait(timeout_s, raise_on_failure=False), as_json)


def _stdin_spec() -> dict[str, Any]:
    """The job file read from stdin, as a mapping: the Client resolves its relative paths
    (data, module) against the working directory, where a file's are against its folder."""
    from tunecluster.spec import parse_yaml

    return parse_yaml(sys.stdin.read(), "<stdin>")


@cli.command()
@click.argument("job", required=False, callback=_job_id)
@redis_option
@json_option
@handle_errors
def status(job: str | None, redis_url: str, as_json: bool) -> None:
    """A job's state and trial counts; without JOB, every job and the live workers."""
    from tunecluster.api import Client

    client = Client(redis_url)
    store = client.store
    if job is None:
        from tunecluster.store.results import job_summaries

        rows = job_summaries(store.jobs)  # a malformed job is a flagged row
        workers = store.workers.live(defaults.LEASE_S)
        data = {"jobs": rows, "workers": [{"id": w, **info} for w, info in workers.items()],
                "chief": store.client.get(store.keys.chief_lock),
                "local_cluster": _local_cluster(redis_url)}
        if as_json:
            _print_json(data)
            return
        console.print(render.jobs_table(rows))
        for row in rows:
            if row.get("waiting"):
                console.print(f"[yellow]waiting:[/yellow] {row['job']}: {row['waiting']}")
        console.print(f"{len(workers)} live worker(s), "
                      f"{sum(i['slots'] for i in workers.values())} slot(s);"
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
        _print_json(summary)
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


@cli.command(name="list")
@redis_option
@json_option
@handle_errors
def list_jobs(redis_url: str, as_json: bool) -> None:
    """List jobs, newest first."""
    from tunecluster.store.results import job_summaries

    rows = job_summaries(_store(redis_url).jobs)  # a malformed job is a flagged row
    _print_json(rows) if as_json else console.print(render.jobs_table(rows))


@cli.command()
@click.argument("job", callback=_job_id)
@redis_option
@handle_errors
def watch(job: str, redis_url: str) -> None:
    """Follow a job live: events, a trial table and a progress bar, until it ends; the
    exit status says how it ended."""
    from tunecluster.follow import finish, watch_job
    from tunecluster.store.results import build_results

    store = _store(redis_url)
    store.jobs.get(job)
    watch_job(store, job)
    finish(build_results(store.jobs, job), as_json=False)


@cli.command()
@click.argument("job", callback=_job_id)
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
        _print_json(data)
    elif as_csv:
        click.echo(render.results_csv(data), nl=False)
    else:
        render.print_results(data, console)


def local_artifacts_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--artifacts", "local_root", envvar=defaults.ARTIFACTS_ENV,
                        default=defaults.ARTIFACTS_ROOT, show_default=True,
                        help="This client's view of the artifacts root: files found there"
                             " (checksum verified) are copied; others are downloaded"
                             " through Redis.")(func)


@cli.command()
@click.argument("job", callback=_job_id)
@redis_option
@click.option("--export", "export", type=click.Path(), help="Copy the best model here.")
@local_artifacts_option
@json_option
@handle_errors
def best(job: str, redis_url: str, export: str | None, local_root: str, as_json: bool) -> None:
    """The best trial; --export copies its model (a .keras file), from the artifacts
    root when this client sees it, else through Redis (stderr says which)."""
    from tunecluster.artifacts import BEST_MODEL
    from tunecluster.store import downloads
    from tunecluster.store.results import build_results

    if export and Path(export).suffix and Path(export).suffix.lower() != ".keras" \
            and not Path(export).is_dir():
        # the file is a .keras archive whatever its name: model.h5 would not load as HDF5
        raise SpecError("--export", f"{export!r}: the best model is a .keras file; name a"
                                    " .keras file or a directory")
    store = _store(redis_url)
    data = build_results(store.jobs, job)
    if not data["best"]:
        raise StoreError(f"job {job} has no completed trial yet")
    out = {**data["best"], "test": data["test"], "best_model": data["artifacts"].get("best_model"),
           "input": data.get("input")}
    if export:
        got = downloads.retrieve(store, job, BEST_MODEL, export, local_root)
        click.echo(got.message, err=True)
        out["exported"] = str(got.path.resolve())
        out["exported_from"] = got.source
    if as_json:
        _print_json(out)
    else:
        click.echo(f"trial {out['trial']}: score {out['score']}  {out['hyperparameters']}")
        if export:
            click.echo(f"exported to {out['exported']}")
        if out["input"]:
            click.echo(render.input_text(out["input"]))


@cli.command(name="artifacts")
@click.argument("job", callback=_job_id)
@redis_option
@click.option("--trial", "trials", multiple=True, callback=_trial_ids,
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
    from tunecluster.store import downloads

    store = _store(redis_url)
    names = [downloads.trial_name(t) for t in trials] if trials else downloads.names(store, job)
    rows, failed = [], 0
    for name in names:
        try:
            got = downloads.retrieve(store, job, name, Path(output) / name, local_root)
        except downloads.DownloadError as exc:
            click.echo(f"error: {str(exc).replace(chr(10), ' ')}", err=True)
            failed += 1
            continue
        click.echo(got.message, err=True)
        rows.append({"name": name, "path": str(got.path.resolve()), "from": got.source,
                     "size": got.size, "sha256": got.sha256})
    if as_json:
        _print_json(rows)
    else:
        for row in rows:
            click.echo(row["path"])
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("job", callback=_job_id)
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


@cli.command()
@click.argument("job", callback=_job_id)
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


@cli.command()
@click.argument("job", callback=_job_id)
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
    from tunecluster.artifacts import job_artifact_dirs, remove_job_artifacts

    if with_artifacts:
        job_artifact_dirs(artifacts_root, job)  # refuses symlinks before Redis is touched
    state = _store(redis_url).jobs.delete(job, force=force, wait_s=timeout_s)
    removed = remove_job_artifacts(artifacts_root, job) if with_artifacts else []
    click.echo(f"deleted {job}" + (f" ({state})" if state else "")
               + "".join(f"; removed {p}" for p in removed))


# --- roles ------------------------------------------------------------------------------------


@cli.command()
@redis_option
@artifacts_option
@click.option("--lease", "lease_s", type=float, default=defaults.LEASE_S, show_default=True)
@click.option("--ray-address", envvar="RAY_ADDRESS", default=None,
              help="Ray cluster for scheduler: ray jobs (or $RAY_ADDRESS); jobs cannot choose"
                   " it. Default: a local Ray started on demand.")
@handle_errors
def chief(redis_url: str, artifacts: str, lease_s: float, ray_address: str | None) -> None:
    """Run the chief (one is active per cluster; others stand by)."""
    import signal

    from tunecluster.chief import Chief
    from tunecluster.security import check_redis_url

    check_redis_url(redis_url, "chief")
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address  # read by tunecluster.ray.backend

    logging.getLogger().setLevel(logging.INFO)
    from tunecluster.artifact_store import local_root

    # An s3:// root is staged locally; finalize maps the staging directory back to it.
    node = Chief(_store(redis_url, patient=True), local_root(artifacts), lease_s=lease_s)
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    signal.signal(signal.SIGINT, lambda *_: node.stop())
    node.run()


@cli.command()
@redis_option
@artifacts_option
@click.option("--slots", type=int, default=None,
              help="Trials at once (default: GPUs / --gpus-per-trial, or 1 on CPU).")
@click.option("--gpus-per-trial", type=int, default=None, help="GPUs pinned to each slot.")
@click.option("--trials-per-gpu", type=int, default=1, show_default=True,
              envvar="TUNECLUSTER_TRIALS_PER_GPU",
              help="Trials sharing each GPU, each capped at its share of the GPU's memory"
                   " (or $TUNECLUSTER_TRIALS_PER_GPU).")
@click.option("--advertise-host", default=None, envvar="TUNECLUSTER_ADVERTISE_HOST",
              help="Address other workers reach this one at, for trials trained by"
                   " several workers (default: this host's address on its route to Redis;"
                   " or $TUNECLUSTER_ADVERTISE_HOST).")
@click.option("--gang-ports", default="29500-29599", show_default=True,
              envvar="TUNECLUSTER_GANG_PORTS",
              help="TCP ports this worker's gang trial processes listen on, LOW-HIGH"
                   " (or $TUNECLUSTER_GANG_PORTS).")
@click.option("--lease", "lease_s", type=float, default=defaults.LEASE_S, show_default=True)
@click.option("--heartbeat", "heartbeat_s", type=float, default=defaults.HEARTBEAT_S,
              show_default=True)
@handle_errors
def worker(redis_url: str, artifacts: str, slots: int | None, gpus_per_trial: int | None,
           trials_per_gpu: int, advertise_host: str | None, gang_ports: str, lease_s: float,
           heartbeat_s: float) -> None:
    """Run a worker: claims trials and trains them."""
    from tunecluster.security import check_redis_url
    from tunecluster.worker.gang import parse_ports
    from tunecluster.worker.loop import Worker

    check_redis_url(redis_url, "worker")
    ports = parse_ports(gang_ports)
    from tunecluster.worker.slots import gpu_memory_mb, plan_slots, visible_gpus

    logging.getLogger().setLevel(logging.INFO)
    gpus = visible_gpus()
    memory = gpu_memory_mb() if gpus and trials_per_gpu > 1 else {}
    try:
        plan = plan_slots(gpus, gpus_per_trial, slots, trials_per_gpu, memory)
    except ValueError as exc:  # a slot plan these options cannot make: bad input
        _fail(f"error: {exc}", ExitCode.USAGE)
        raise  # not reached: _fail exits
    Worker(_store(redis_url, patient=True), redis_url, artifacts, slots=len(plan), slot_env=plan,
           lease_s=lease_s, heartbeat_s=heartbeat_s, advertise_host=advertise_host,
           gang_ports=ports).run()


@cli.command()
@redis_option
@click.option("--role", type=click.Choice(["chief", "worker", "redis"]), default="redis",
              show_default=True)
@click.option("--max-age", "max_age_s", type=float, default=defaults.LEASE_S * 3,
              show_default=True, help="Oldest acceptable heartbeat, seconds.")
def health(redis_url: str, role: str, max_age_s: float) -> None:
    """Probe: exit 0 when Redis answers (and, per --role, a fresh heartbeat exists)."""
    import socket

    from tunecluster.store.queue import server_ms

    try:
        store = _store(redis_url)
        now = server_ms(store.client)  # beats are Redis time: no clock skew between pods
        if role == "chief":
            beat = store.client.get(store.keys.chief_beat)
            ok = beat is not None and now - int(beat) < max_age_s * 1000
        elif role == "worker":
            host = socket.gethostname()
            ok = any(info.get("host") == host and now - int(info.get("beat", 0)) < max_age_s * 1000
                     for info in store.workers.live(max_age_s).values())
        else:
            ok = True
    except Exception as exc:  # noqa: BLE001 - a probe reports, it does not raise
        click.echo(f"unhealthy: {exc}", err=True)
        sys.exit(1)
    click.echo("ok" if ok else f"unhealthy: no fresh {role} heartbeat")
    sys.exit(0 if ok else 1)


# The dashboard's and the exports' commands live beside the code they drive; their
# modules import nothing heavy until a command runs.
from tunecluster.dashboard.cli import register as _register_dashboard  # noqa: E402
from tunecluster.export.cli import register as _register_export  # noqa: E402

_register_dashboard(cli)
_register_export(cli, job_id=_job_id, store=_store, handle_errors=handle_errors,
                 redis_option=redis_option)


def main() -> None:
    cli(prog_name="tunecluster")


if __name__ == "__main__":
    main()
