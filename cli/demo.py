"""``silvasonic-uploader demo`` (placeholder until the packaging issue lands)."""

from __future__ import annotations

import click


@click.command()
def demo() -> None:
    """Run a demo station on this machine (not yet available)."""
    raise click.ClickException("not yet: the demo arrives with the packaging issue (#6)")
