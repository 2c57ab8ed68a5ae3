"""Declarative base shared by every table the uploader reads or writes."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """The one metadata object; Alembic's ``env.py`` and the tests read it."""
