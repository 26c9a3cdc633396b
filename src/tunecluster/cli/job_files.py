"""The commands that need no cluster: check a job file, its schema, the named datasets."""

from __future__ import annotations

import click

from tunecluster.cli.common import handle_errors, json_option, print_json, set_option


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@click.option("--no-build", is_flag=True, help="Do not import a custom model module.")
@handle_errors
def validate(spec: str, overrides: tuple[str, ...], no_build: bool) -> None:
    """Check a job file; exit 0 if valid, 2 with a one-line message if not."""
    from tunecluster.api.submission import prepare_job

    job = prepare_job(spec, overrides, discover=not no_build)
    n = len(job.space.get("space", []))
    click.echo(f"ok: {job.spec.name} ({job.spec.search.algorithm} search over {n}"
               f" hyperparameter{'s' if n != 1 else ''}, objective"
               f" {job.spec.search.objective_name} {job.spec.search.direction})")


@click.command()
def schema() -> None:
    """Print the job file's JSON Schema (for editor completion)."""
    from tunecluster.spec import JobSpec

    print_json(JobSpec.model_json_schema(by_alias=True))


@click.command()
@json_option
def datasets(as_json: bool) -> None:
    """List the named datasets."""
    from tunecluster.data import DATASETS

    rows = [{"name": d.name, "task": d.task, "embedded": d.embedded,
             "description": d.description} for d in DATASETS.values()]
    if as_json:
        print_json(rows)
        return
    for r in rows:
        where = "embedded" if r["embedded"] else "download"
        click.echo(f"{r['name']:<20} {r['task']:<15} {where:<9} {r['description']}")


COMMANDS = (validate, schema, datasets)
