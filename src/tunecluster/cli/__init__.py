"""The ``tunecluster`` command line: parse, delegate, print — no logic lives here.

The group and its entry point (``main``). The commands live by what they act on:
``job_files`` (a job file, no cluster needed), ``clusters`` (run, up, down: clusters on
this machine), ``jobs`` (submitted jobs, through Redis), ``roles`` (chief, worker,
health); ``common`` holds what they share (error handling, options, argument checks).
"""

from __future__ import annotations

import logging
import os

import click

from tunecluster.cli import clusters, common, job_files, jobs, roles

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@click.group()
@click.version_option(package_name="tunecluster")
@click.option("-v", "--verbose", is_flag=True, help="Log what the roles do.")
def cli(verbose: bool) -> None:
    """Distributed hyperparameter tuning for Keras: KerasTuner oracles, warm workers, Redis."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


for _command in (*job_files.COMMANDS, *clusters.COMMANDS, *jobs.COMMANDS, *roles.COMMANDS):
    cli.add_command(_command)

# The dashboard's and the exports' commands live beside the code they drive; their
# modules import nothing heavy until a command runs.
from tunecluster.dashboard.cli import register as _register_dashboard  # noqa: E402
from tunecluster.export.cli import register as _register_export  # noqa: E402
from tunecluster.options import redis_option  # noqa: E402

_register_dashboard(cli)
_register_export(cli, job_id=common.checked_job_id, store=common.open_store,
                 handle_errors=common.handle_errors, redis_option=redis_option)


def main() -> None:
    cli(prog_name="tunecluster")
