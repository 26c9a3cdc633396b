"""The commands for clusters on this machine: ``run`` (on the local cluster of ``up``,
else on an embedded one), ``up`` and ``down``."""

from __future__ import annotations

import click
import redis

from tunecluster import defaults
from tunecluster.cli.common import (
    artifacts_option,
    fail,
    handle_errors,
    json_option,
    print_json,
    set_option,
)
from tunecluster.errors import ExitCode
from tunecluster.follow import err
from tunecluster.store.connection import redact


@click.command()
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
            fail(interrupted_line(exc, "nothing of it runs on; the local cluster of"
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
        fail(interrupted_line(got, "the embedded cluster (Redis, chief, workers and"
                                    " their trials) is stopped: nothing is left running"),
              ExitCode.INTERRUPTED)


@click.command()
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
        fail(f"error: {exc}", 1)
        return
    ready = _wait_ready(state.url, workers, wait_s)
    info = {**state.to_json(), "url": redact(state.url), "ready": ready,
            "state_file": str(persistent.state_file())}
    if as_json:
        print_json(info)
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
            chief_ok = store.chief_beat() is not None
            if chief_ok and len(store.workers.live(defaults.LEASE_S)) >= workers:
                return True
        except redis.RedisError:
            pass
        time.sleep(0.1)
    return False


@click.command()
@handle_errors
def down() -> None:
    """Stop the local cluster of `tunecluster up`: every process it started."""
    from tunecluster.cluster import persistent

    try:
        state = persistent.down()
    except persistent.ClusterError as exc:
        fail(f"error: {exc}", 1)
        return
    click.echo(f"local cluster down: stopped redis ({state.redis_pid}), chief"
               f" ({state.chief_pid}) and {len(state.worker_pids)} worker(s)"
               f" ({', '.join(map(str, state.worker_pids)) or '-'})")


COMMANDS = (run, up, down)
