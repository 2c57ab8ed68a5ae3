"""``silvasonic-uploader db``: migrate or check the schema."""

from __future__ import annotations

import click
from sqlalchemy import create_engine

from uploader.db import schema
from uploader.errors import SchemaError
from uploader.settings import DatabaseSettings


@click.group()
def db() -> None:
    """Database schema: `upgrade` migrates, `check` tells whether it is current."""


@db.command()
def upgrade() -> None:
    """Create or upgrade the uploader's tables (safe to run again)."""
    url = DatabaseSettings().url
    try:
        schema.upgrade(url)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None
    engine = create_engine(url)
    try:
        click.echo(f"schema at {schema.current_revision(engine)} (head {schema.head_revision()})")
    finally:
        engine.dispose()


@db.command()
def check() -> None:
    """Exit 0 when the schema is current, 1 (with what to do) otherwise."""
    engine = create_engine(DatabaseSettings().url)
    try:
        schema.require_current_schema(engine)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo("schema is current")
