"""Schema management: run our Alembic revisions and check a database is current.

Only ``silvasonic-uploader db upgrade`` migrates; workers and the dispatcher call
:func:`require_current_schema` and refuse to start on an old schema. That check reads the
version table with one query and compares it with ``HEAD_REVISION``, so the long-lived
processes never import Alembic (~11 MB resident in each; bench/memory.py). A unit test keeps
``HEAD_REVISION`` equal to the head of ``migrations/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text

from uploader.errors import SchemaOutdated

if TYPE_CHECKING:
    from alembic.config import Config

VERSION_TABLE = "silvasonic_uploader_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
#: the newest revision in migrations/versions (tests/unit/test_schema_head.py checks it)
HEAD_REVISION = "0004"


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats '%' specially; URLs may carry %-escapes.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The head of ``migrations/`` as Alembic computes it (``HEAD_REVISION`` must equal it)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision (None: never migrated). Raises ``SchemaOutdated`` for a table
    holding several, which our linear history never writes."""
    with engine.connect() as conn:
        if conn.execute(text("SELECT to_regclass(:t)"), {"t": VERSION_TABLE}).scalar() is None:
            return None
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise SchemaOutdated(",".join(sorted(rows)), HEAD_REVISION)
    return rows[0] if rows else None


def upgrade(url: str, revision: str = "head") -> None:
    """Apply our revisions (idempotent: a second run does nothing)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def schema_is_current(engine: Engine) -> bool:
    return current_revision(engine) == HEAD_REVISION


def require_current_schema(engine: Engine) -> None:
    current = current_revision(engine)
    if current != HEAD_REVISION:
        raise SchemaOutdated(current, HEAD_REVISION)
