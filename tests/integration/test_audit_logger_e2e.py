"""The seed's audit-logger integration table, against real PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.factories import make_recording, make_remote
from uploader.completion.audit_logger import log_upload_attempt


def _uploads(session: Session, recording_id: int) -> list[tuple[str, bool]]:
    return [
        (row.remote_slug, row.success)
        for row in session.execute(
            text("SELECT remote_slug, success FROM uploads WHERE recording_id = :r ORDER BY id"),
            {"r": recording_id},
        )
    ]


def test_upload_success_chain(session: Session) -> None:
    make_remote(session, "nextcloud")
    rec = make_recording(session)
    result = log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 123, True, None)
    session.refresh(rec)
    assert result.inserted and result.recording_complete
    assert _uploads(session, rec.id) == [("nextcloud", True)]
    assert rec.uploaded and rec.uploaded_at is not None


def test_upload_failure_chain(session: Session) -> None:
    make_remote(session, "nextcloud")
    rec = make_recording(session)
    result = log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 123, False, "refused")
    session.refresh(rec)
    assert result.inserted and not result.recording_complete
    assert _uploads(session, rec.id) == [("nextcloud", False)]
    assert not rec.uploaded and rec.uploaded_at is None


def test_multiple_remotes_tracked(session: Session) -> None:
    make_remote(session, "nextcloud")
    make_remote(session, "usb")
    rec = make_recording(session)
    first = log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 1, True, None)
    session.refresh(rec)
    assert not first.recording_complete and not rec.uploaded
    second = log_upload_attempt(session, rec.id, "usb", "a.flac", 1, True, None)
    session.refresh(rec)
    assert second.recording_complete and rec.uploaded
    assert _uploads(session, rec.id) == [("nextcloud", True), ("usb", True)]
