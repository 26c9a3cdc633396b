"""The export commands, registered on the ``tunecluster`` group by ``cli.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def register(group: click.Group, *, job_id: Callable[..., Any],
             store: Callable[[str], Any], handle_errors: Callable[[F], F],
             redis_option: Callable[[F], F]) -> None:
    """Add the export commands to ``group`` (imports nothing heavy). The CLI hands in
    its shared parts (the job-id check, the store, its error handling and --redis), so
    this face never imports the CLI that imports it."""
    _job_id, _store = job_id, store

    @group.command("tensorboard")
    @click.argument("job", callback=_job_id)
    @click.option("--logdir", required=True, type=click.Path(file_okay=False),
                  help="Directory to write (then: tensorboard --logdir DIR).")
    @click.option("--overwrite", is_flag=True,
                  help="Replace this job's runs in a directory that already has them.")
    @redis_option
    @handle_errors
    def tensorboard(job: str, logdir: str, overwrite: bool, redis_url: str) -> None:
        """Write JOB's trials as TensorBoard runs: per-epoch scalars and the HParams
        plugin's summaries (table, parallel coordinates, scatter plots)."""
        from tunecluster.api.tensorboard import export

        done = export(_store(redis_url), job, logdir, overwrite=overwrite)
        click.echo(f"wrote {len(done.runs)} run(s), {len(done.hyperparameters)}"
                   f" hyperparameter(s), {len(done.metrics)} metric(s) to {done.logdir}")
        click.echo(f"view: tensorboard --logdir {done.logdir}")
