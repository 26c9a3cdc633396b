"""What the commands share: error handling, the options, argument checks, the store."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click
import redis

from tunecluster import defaults
from tunecluster.errors import ExitCode, TuneclusterError


def fail(message: str, code: int) -> None:
    click.echo(message.replace("\n", " "), err=True)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every failure becomes one line on stderr and an ``ExitCode``: a
    ``TuneclusterError`` names its own (``exit_code``: USAGE for bad input, TIMED_OUT for
    a --timeout, ...), UNREACHABLE when Redis does not answer, ERROR for the rest."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tunecluster.store import redact

        try:
            return func(*args, **kwargs)
        except TuneclusterError as exc:
            fail(f"{exc.label}: {exc}", exc.exit_code)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            url = kwargs.get("redis_url") or defaults.REDIS_URL
            fail(f"error: cannot reach Redis at {redact(url)} ({exc})", ExitCode.UNREACHABLE)
        except (FileNotFoundError, TimeoutError, ValueError) as exc:
            fail(f"error: {exc}", ExitCode.ERROR)

    return wrapper


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


def checked_job_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """JOB arguments become Redis keys and paths: anything but a job id is refused here,
    in one line (exit 2), before Redis is asked."""
    from tunecluster.ids import InvalidId, check_job_id

    try:
        return None if value is None else check_job_id(value, "JOB")
    except InvalidId as exc:
        fail(f"error: {exc}", ExitCode.USAGE)
        raise  # not reached: fail exits


def checked_trial_ids(_ctx: click.Context, _param: click.Parameter,
                      values: tuple[str, ...]) -> tuple[str, ...]:
    """--trial values become paths too: refused as JOB is (exit 2), before Redis."""
    from tunecluster.ids import InvalidId, check_trial_id

    try:
        return tuple(check_trial_id(v, "--trial") for v in values)
    except InvalidId as exc:
        fail(f"error: {exc}", ExitCode.USAGE)
        raise  # not reached: fail exits


def open_store(redis_url: str, patient: bool = False) -> Any:
    """Interactive commands fail fast; roles (chief, worker) ride out Redis restarts."""
    from tunecluster.store import Store

    return Store.from_url(redis_url, retries=20 if patient else 1)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def local_artifacts_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--artifacts", "local_root", envvar=defaults.ARTIFACTS_ENV,
                        default=defaults.ARTIFACTS_ROOT, show_default=True,
                        help="This client's view of the artifacts root: files found there"
                             " (checksum verified) are copied; others are downloaded"
                             " through Redis.")(func)
