"""The export commands, registered on the ``tunecluster`` group by ``cli.py``."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the export commands to ``group`` (imports nothing heavy)."""
    # The CLI's shared options and error handling; imported here, not at the top:
    # cli.py imports this module while it is itself being imported.
    from tunecluster.cli import _job_id, _store, handle_errors, redis_option

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
        from tunecluster.export.tensorboard import export

        done = export(_store(redis_url), job, logdir, overwrite=overwrite)
        click.echo(f"wrote {len(done.runs)} run(s), {len(done.hyperparameters)}"
                   f" hyperparameter(s), {len(done.metrics)} metric(s) to {done.logdir}")
        click.echo(f"view: tensorboard --logdir {done.logdir}")
