"""The command-line options every face shares (the CLI's commands, the dashboard's and
the export's): one ``--redis``, whose default is the same everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from tunecluster import defaults


def _redis_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    """``--redis`` or its variable; else the local cluster of ``tunecluster up``, if one
    runs; else the default URL."""
    from tunecluster.cluster.persistent import resolve_url

    return resolve_url(value)


def redis_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--redis", "redis_url", envvar=defaults.REDIS_URL_ENV,
                        default=None, callback=_redis_url,
                        help=f"Redis URL (or ${defaults.REDIS_URL_ENV}); redis://, rediss://"
                             " or redis+sentinel://. Default: the local cluster of"
                             f" `tunecluster up` when one runs, else {defaults.REDIS_URL}"
                        )(func)
