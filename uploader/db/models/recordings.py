"""Silvasonic's ``recordings`` table (SEED-ERA columns, docs/design/0012-upstream.md §1).

The Indexer owns the rows; the uploader only reads them and sets ``uploaded``/``uploaded_at``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from uploader.db.models.base import Base


class Recording(Base):
    """One WAV segment; ``file_raw`` is relative to the recorder workspace root."""

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    sensor_id: Mapped[str] = mapped_column(Text, ForeignKey("devices.name"), nullable=False)
    file_raw: Mapped[str] = mapped_column(Text, nullable=False)
    file_processed: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration: Mapped[float] = mapped_column(Double, nullable=False)
    sample_rate: Mapped[int] = mapped_column(Integer, nullable=False)
    filesize_raw: Mapped[int] = mapped_column(BigInteger, nullable=False)
    filesize_processed: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    uploaded: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    uploaded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    local_deleted: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )
    analysis_state: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    # SEED-ERA only: never used upstream. The DDL's DEFAULT '{}' matters: upstream code after
    # SEED-ERA (which dropped the column) inserts recordings without naming it.
    upload_info: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )

    __table_args__ = (
        Index("ix_recordings_time", "time"),
        Index("ix_recordings_sensor_id", "sensor_id"),
        Index(
            "ix_recordings_analysis_pending",
            "time",
            postgresql_where=text("local_deleted = false"),
        ),
        Index(
            "ix_recordings_upload_pending",
            "time",
            postgresql_where=text("uploaded = false AND local_deleted = false"),
        ),
    )
