"""The dashboard's commands, registered on the ``tunecluster`` group by ``cli.py``:
``tunecluster dashboard`` (the web server) and ``tunecluster report`` (one HTML file)."""

from __future__ import annotations

import sys

import click

from tunecluster.options import redis_option


def _fail(message: str, code: int = 1) -> None:
    click.echo(message.replace("\n", " "), err=True)
    sys.exit(code)


@click.command()
@redis_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs"
                   " $TUNECLUSTER_DASHBOARD_TOKEN.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--read-only", is_flag=True, help="No cancel, no submit (403).")
@click.option("--open-metrics", is_flag=True,
              help="Serve /metrics without the token (for Prometheus scrapes).")
def dashboard(redis_url: str, host: str, port: int, read_only: bool,
              open_metrics: bool) -> None:
    """Serve the web dashboard: jobs, trials, charts and workers, live from Redis."""
    import redis

    from tunecluster.dashboard.server import serve
    from tunecluster.store import AuthFailed, redact

    try:
        serve(redis_url, host, port, read_only=read_only, open_metrics=open_metrics,
              announce=lambda line: click.echo(line, err=True))
    except (ValueError, AuthFailed) as exc:
        _fail(f"error: {exc}", 2 if isinstance(exc, ValueError) else 1)
    except redis.ConnectionError as exc:
        _fail(f"error: cannot reach Redis at {redact(redis_url)} ({exc})")


@click.command()
@click.argument("job")
@redis_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html",
              show_default=True, help="The HTML file to write.")
def report(job: str, redis_url: str, output: str) -> None:
    """Write one self-contained HTML file (data and plotly.js inline) with the job's
    summary, trial table and charts: it opens offline, attach it anywhere."""
    import redis

    from tunecluster.dashboard.report import write_report
    from tunecluster.errors import StoreError
    from tunecluster.ids import InvalidId, check_job_id
    from tunecluster.store import AuthFailed, redact

    try:
        check_job_id(job, "JOB")
    except InvalidId as exc:
        _fail(f"error: {exc}", 2)
    try:
        path = write_report(redis_url, job, output)
    except (StoreError, AuthFailed, OSError) as exc:
        _fail(f"error: {exc}")
    except redis.ConnectionError as exc:
        _fail(f"error: cannot reach Redis at {redact(redis_url)} ({exc})")
    click.echo(str(path))


def register(group: click.Group) -> None:
    """Add the dashboard's commands to ``group`` (imports nothing heavy)."""
    group.add_command(dashboard)
    group.add_command(report)
