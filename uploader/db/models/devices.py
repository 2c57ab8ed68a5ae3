"""Silvasonic's ``devices`` and ``microphone_profiles`` (docs/design/0012-upstream.md §1).

The uploader never writes these; ``recordings.sensor_id`` points at ``devices.name``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKey, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from uploader.db.models.base import Base


class MicrophoneProfile(Base):
    __tablename__ = "microphone_profiles"

    slug: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    match_pattern: Mapped[str | None] = mapped_column(Text, nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    is_system: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))


class Device(Base):
    __tablename__ = "devices"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    serial_number: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'offline'"))
    enrollment_status: Mapped[str] = mapped_column(
        Text, nullable=False, server_default=text("'pending'")
    )
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    profile_slug: Mapped[str | None] = mapped_column(
        Text, ForeignKey("microphone_profiles.slug"), nullable=True
    )
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    workspace_name: Mapped[str | None] = mapped_column(Text, nullable=True, unique=True)
