"""Pipeline commands of the ``mend`` CLI (flag, fix, promote, rollback); registered by ``flows.cli``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the pipeline commands (filled in as the pipeline lands)."""
