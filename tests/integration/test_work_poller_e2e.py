"""The seed's work-poller integration table, against real PostgreSQL."""

from __future__ import annotations

from sqlalchemy.orm import Session

from tests.factories import make_recording, make_remote, make_upload
from uploader.ledger.work_poller import find_pending_uploads


def test_pending_query_real_db(session: Session) -> None:
    # given: one remote, four recordings: pending, done, pending, deleted
    make_remote(session, "nextcloud")
    first = make_recording(session)
    done = make_recording(session)
    third = make_recording(session)
    make_recording(session, local_deleted=True)
    make_upload(session, done.id, "nextcloud")
    make_upload(session, third.id, "nextcloud", success=False)  # a failure is still pending
    # when
    pending = find_pending_uploads(session, "nextcloud", 50)
    # then: the pending rows with the fields the pipeline needs, oldest first
    assert [(p.recording_id, p.file_raw, p.sensor_id, p.time) for p in pending] == [
        (r.id, r.file_raw, r.sensor_id, r.time) for r in (first, third)
    ]


def test_multi_remote_independence(session: Session) -> None:
    make_remote(session, "nextcloud")
    make_remote(session, "s3", type="s3")
    rec = make_recording(session)
    make_upload(session, rec.id, "nextcloud")
    assert find_pending_uploads(session, "nextcloud", 50) == []
    assert [p.recording_id for p in find_pending_uploads(session, "s3", 50)] == [rec.id]


def test_uploaded_true_does_not_affect_polling(session: Session) -> None:
    make_remote(session, "nextcloud")
    rec = make_recording(session, uploaded=True)
    assert [p.recording_id for p in find_pending_uploads(session, "nextcloud", 50)] == [rec.id]
