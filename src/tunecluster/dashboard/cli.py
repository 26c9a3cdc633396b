"""The dashboard's commands, registered on the ``tunecluster`` group by ``cli.py``."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the dashboard's commands to ``group`` (imports nothing heavy)."""
