"""Alembic environment: the URL comes from the caller (``uploader.db.schema``) or from
``DatabaseSettings``; our version table is ``silvasonic_uploader_alembic_version`` so we never
collide with another tool's Alembic history in a shared Silvasonic database."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from uploader.db.models import Base
from uploader.db.schema import VERSION_TABLE
from uploader.settings import DatabaseSettings

config = context.config
url = config.get_main_option("sqlalchemy.url") or DatabaseSettings().url


def run_migrations_offline() -> None:
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(
            connection=connectable, target_metadata=Base.metadata, version_table=VERSION_TABLE
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
