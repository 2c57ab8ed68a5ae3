"""Schema management: run our Alembic revisions and check a database is current.

Only ``silvasonic-uploader db upgrade`` migrates; workers and the dispatcher call
:func:`require_current_schema` and refuse to start on an old schema.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from uploader.errors import SchemaOutdated

VERSION_TABLE = "silvasonic_uploader_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats '%' specially; URLs may carry %-escapes.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


def upgrade(url: str, revision: str = "head") -> None:
    """Apply our revisions (idempotent: a second run does nothing)."""
    command.upgrade(alembic_config(url), revision)


def schema_is_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


def require_current_schema(engine: Engine) -> None:
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise SchemaOutdated(current, head)
