"""``HEAD_REVISION`` (what workers compare the database with, without importing Alembic) is
the head Alembic computes from ``migrations/``: a new revision must update it."""

from __future__ import annotations

from uploader.db import schema


def test_head_revision_constant_is_alembics_head() -> None:
    assert schema.head_revision() == schema.HEAD_REVISION
