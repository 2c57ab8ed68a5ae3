"""The uploader's tables: ``storage_remotes`` and ``uploads`` (SEED-ERA,
docs/design/0012-upstream.md §1) plus our own bookkeeping (``pair_state``, ``remote_cursor``,
``remote_status``).

``uploads`` is the immutable audit: rows are only ever inserted. Our extra columns on it are
nullable so a SEED-ERA database keeps every row it had.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.orm import Mapped, mapped_column

from uploader.db.models.base import Base


class StorageRemote(Base):
    """A cloud archive; ``slug`` names its queue, container and heartbeat instance."""

    __tablename__ = "storage_remotes"

    slug: Mapped[str] = mapped_column(Text, primary_key=True)
    type: Mapped[str] = mapped_column(Text, nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    is_active: Mapped[bool | None] = mapped_column(
        Boolean, nullable=True, server_default=text("true")
    )
    target_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    encryption_test: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, server_default=func.now()
    )
    updated_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (Index("ix_storage_remotes_active", "is_active"),)


class Upload(Base):
    """One attempt to put one recording on one remote. Insert-only."""

    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    recording_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("recordings.id"), nullable=False, index=True
    )
    # no foreign key since migration 0004: the audit outlives the remotes it names
    remote_slug: Mapped[str] = mapped_column(Text, nullable=False, index=True)
    # SEED-ERA has no SQL default; always written explicitly (the database's now()).
    attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    filename: Mapped[str] = mapped_column(Text, nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    success: Mapped[bool] = mapped_column(Boolean, nullable=False)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # ours (nullable, added by migration 0002)
    remote_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Double, nullable=True)
    error_kind: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempt_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    # ours (nullable, added by migration 0004): where a success was verified, and how
    destination: Mapped[str | None] = mapped_column(Text, nullable=True)
    verified_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    content_md5: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        # exactly one success row per pair and destination; also serves the "has this remote
        # got it where it points now?" probe
        Index(
            "uq_uploads_success_pair",
            "recording_id",
            "remote_slug",
            text("coalesce(destination, '')"),
            unique=True,
            postgresql_where=text("success"),
        ),
        # a repeated errback for the same attempt adds no second failure row
        Index(
            "uq_uploads_attempt_key",
            "attempt_key",
            unique=True,
            postgresql_where=text("attempt_key IS NOT NULL"),
        ),
    )


class PairState(Base):
    """A (recording, remote) pair that is leased, has failed, or is parked.

    Pairs that were never tried are not here (see ``RemoteCursor``); done pairs are removed.
    """

    __tablename__ = "pair_state"

    recording_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("recordings.id"), primary_key=True
    )
    remote_slug: Mapped[str] = mapped_column(
        Text, ForeignKey("storage_remotes.slug", ondelete="CASCADE"), primary_key=True
    )
    lease_token: Mapped[UUID | None] = mapped_column(PG_UUID(as_uuid=True), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    file_failures: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    parked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    # what the steps proved under a lease token (uploader.ledger.evidence; migration 0004)
    flac_token: Mapped[UUID | None] = mapped_column(PG_UUID(as_uuid=True), nullable=True)
    flac_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    flac_md5: Mapped[str | None] = mapped_column(Text, nullable=True)
    verified_token: Mapped[UUID | None] = mapped_column(PG_UUID(as_uuid=True), nullable=True)
    verified_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    verified_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    verified_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    verified_destination: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_pair_state_remote_lease", "remote_slug", "lease_until"),)


class RemoteCursor(Base):
    """Per-remote watermark: every recording with ``id <= last_recording_id`` has been
    handed out to this remote at least once (it has a success row, a ``pair_state`` row, or
    was ``local_deleted``). New work is found by walking forward from here."""

    __tablename__ = "remote_cursor"

    remote_slug: Mapped[str] = mapped_column(
        Text, ForeignKey("storage_remotes.slug", ondelete="CASCADE"), primary_key=True
    )
    last_recording_id: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    #: the destination the cursor was walked for (``uploader.remotes.destination``)
    destination: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: when the remote was last pointed elsewhere (None: never, since migration 0004)
    retargeted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class RemoteObject(Base):
    """Which recording owns which object path at which destination (``remote_objects``)."""

    __tablename__ = "remote_objects"

    destination: Mapped[str] = mapped_column(Text, primary_key=True)
    path_key: Mapped[str] = mapped_column(Text, primary_key=True)
    recording_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("recordings.id"), nullable=False
    )
    remote_slug: Mapped[str] = mapped_column(Text, nullable=False)
    remote_path: Mapped[str] = mapped_column(Text, nullable=False)
    claimed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    __table_args__ = (
        Index("uq_remote_objects_recording", "recording_id", "destination", unique=True),
    )


class RemoteStatus(Base):
    """What the workers learned about a remote: ``ok``, ``unavailable`` or ``misconfigured``.

    Lives in the database so the dispatcher, the worker's heartbeat (prefork parent) and
    ``status`` all see the same thing.
    """

    __tablename__ = "remote_status"

    remote_slug: Mapped[str] = mapped_column(
        Text, ForeignKey("storage_remotes.slug", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'ok'"))
    since: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    config_fingerprint: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: failed attempts in a row (any kind) since the last success: the breaker's count
    failures: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    #: the next attempt at a remote that is not ok may be made from then on
    probe_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
