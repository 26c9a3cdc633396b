"""The export commands, registered on the ``tunecluster`` group by ``cli.py``."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the export commands to ``group`` (imports nothing heavy)."""
