"""``uploader.completion.audit_logger`` against real PostgreSQL.

The seed's *unit* table for the audit logger (``test_success_creates_upload_and_marks_recording``
… ``test_audit_log_immutable``) says "mocked session"; the completion rule is SQL, so a mock
would test nothing. Those tests run here, with the rest: idempotency, redaction, the required
set (deactivated, over the cap, misconfigured, paused, empty), two remotes finishing at the
same instant, the recompute sweep and the Janitor's check.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from tests.factories import count_rows, make_recording, make_remote, make_upload, set_config
from uploader.completion import audit_logger
from uploader.completion.audit_logger import log_upload_attempt, recompute_uploaded
from uploader.db.models import Recording, StorageRemote


def _uploaded(session: Session, rec: Recording) -> bool:
    return bool(
        session.execute(
            text("SELECT uploaded FROM recordings WHERE id = :i"), {"i": rec.id}
        ).scalar()
    )


def _deactivate(session: Session, slug: str) -> None:
    remote = session.get(StorageRemote, slug)
    assert remote is not None
    remote.is_active = False
    session.flush()


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", capture)
    yield seen
    event.remove(engine, "before_cursor_execute", capture)


# -- the seed's unit table ------------------------------------------------------------------


def test_success_creates_upload_and_marks_recording(session: Session) -> None:
    make_remote(session, "nextcloud")
    make_remote(session, "usb")
    rec = make_recording(session)
    make_upload(session, rec.id, "usb")
    result = log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 10, True, None)
    assert result == audit_logger.AuditResult(inserted=True, recording_complete=True)
    assert _uploaded(session, rec)
    at, uploaded_at, now, clock = session.execute(
        text(
            "SELECT u.attempt_at, r.uploaded_at, now(), clock_timestamp() FROM uploads u"
            " JOIN recordings r ON r.id = u.recording_id WHERE u.remote_slug = 'nextcloud'"
        )
    ).one()
    # the database's clock: the attempt at this transaction's start, the flag when it was set
    assert at == now <= uploaded_at <= clock


def test_success_partial_remotes(session: Session) -> None:
    make_remote(session, "nextcloud")
    make_remote(session, "usb")
    rec = make_recording(session)
    result = log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 10, True, None)
    assert result == audit_logger.AuditResult(inserted=True, recording_complete=False)
    assert count_rows(session, "uploads") == 1
    assert not _uploaded(session, rec)


def test_failure_creates_upload_only(session: Session) -> None:
    make_remote(session, "nextcloud")
    rec = make_recording(session)
    result = log_upload_attempt(
        session, rec.id, "nextcloud", "a.flac", 10, False, "403", error_kind="file"
    )
    assert result == audit_logger.AuditResult(inserted=True, recording_complete=False)
    row = session.execute(text("SELECT success, error_message, error_kind FROM uploads")).one()
    assert tuple(row) == (False, "403", "file")
    assert not _uploaded(session, rec)


def test_audit_log_immutable(session: Session, statements: list[str]) -> None:
    make_remote(session, "nextcloud")
    rec = make_recording(session)
    statements.clear()
    log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 1, False, "x", attempt_key="k")
    log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 1, False, "x", attempt_key="k")
    log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 1, True, None)
    log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 1, True, None)
    recompute_uploaded(session)
    writes = [
        s
        for s in statements
        if re.search(r"\b(UPDATE|DELETE\s+FROM|INSERT\s+INTO)\s+uploads\b", s, re.I)
    ]
    assert writes and all(re.match(r"\s*INSERT\s+INTO\s+uploads\b", s, re.I) for s in writes)
    assert count_rows(session, "uploads") == 2


# -- idempotency and content ----------------------------------------------------------------


def test_redelivered_success_adds_no_second_success_row(session: Session) -> None:
    make_remote(session, "nextcloud")
    rec = make_recording(session)
    assert log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 1, True, None).inserted
    again = log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 1, True, None)
    assert again == audit_logger.AuditResult(inserted=False, recording_complete=True)
    assert count_rows(session, "uploads") == 1


def test_repeated_failure_with_the_same_attempt_key_adds_no_row(session: Session) -> None:
    make_remote(session, "nextcloud")
    rec = make_recording(session)
    key = "token:3"
    assert log_upload_attempt(
        session, rec.id, "nextcloud", "a", 1, False, "x", attempt_key=key
    ).inserted
    assert not log_upload_attempt(
        session, rec.id, "nextcloud", "a", 1, False, "x", attempt_key=key
    ).inserted
    assert log_upload_attempt(
        session, rec.id, "nextcloud", "a", 1, False, "x", attempt_key="token:4"
    ).inserted
    assert log_upload_attempt(session, rec.id, "nextcloud", "a", 1, False, "x").inserted  # no key
    assert count_rows(session, "uploads") == 3


def test_error_text_is_redacted_and_details_stored(session: Session) -> None:
    make_remote(session, "nextcloud")
    rec = make_recording(session)
    log_upload_attempt(
        session, rec.id, "nextcloud", "a.flac", 5, False,
        "PUT https://alice:s3cret@dav.example/x failed: password=hunter2",
        duration_s=1.5, remote_path="silvasonic/st/mic/2026-03-26/a.flac", error_kind="file",
    )  # fmt: skip
    row = session.execute(text("SELECT error_message, duration_s, remote_path FROM uploads")).one()
    assert "s3cret" not in row.error_message and "hunter2" not in row.error_message
    assert "dav.example" in row.error_message
    assert row.duration_s == 1.5 and row.remote_path.endswith("/a.flac")


def test_unknown_recording_raises_lookup_error(session: Session) -> None:
    make_remote(session, "nextcloud")
    with pytest.raises(LookupError, match="recording 424242"):
        log_upload_attempt(session, 424242, "nextcloud", "a.flac", 1, True, None)


# -- which remotes count ----------------------------------------------------------------------


def test_with_every_remote_deactivated_nothing_is_ever_flagged(session: Session) -> None:
    make_remote(session, "nextcloud", is_active=False)
    rec = make_recording(session)
    result = log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 1, True, None)
    assert result.inserted and not result.recording_complete
    assert recompute_uploaded(session) == 0
    assert not _uploaded(session, rec)


def test_inactive_and_over_cap_remotes_do_not_count(session: Session) -> None:
    from datetime import UTC, datetime

    make_remote(session, "first", created_at=datetime(2026, 1, 1, tzinfo=UTC))
    make_remote(session, "second", created_at=datetime(2026, 1, 2, tzinfo=UTC))
    make_remote(session, "off", is_active=False)
    set_config(session, "system", {"max_uploaders": 1})
    rec = make_recording(session)
    assert log_upload_attempt(session, rec.id, "first", "a.flac", 1, True, None).recording_complete


def test_misconfigured_and_paused_remotes_stay_required(session: Session) -> None:
    make_remote(session, "nextcloud")
    make_remote(session, "broken", type="webdav", config={})  # invalid config: misconfigured
    set_config(session, "uploader", {"enabled": False})
    rec = make_recording(session)
    assert not log_upload_attempt(
        session, rec.id, "nextcloud", "a", 1, True, None
    ).recording_complete
    assert log_upload_attempt(session, rec.id, "broken", "a", 1, True, None).recording_complete


def test_unreadable_settings_flag_nothing_but_keep_the_row(session: Session) -> None:
    make_remote(session, "nextcloud")
    set_config(session, "system", {"max_uploaders": "many"})
    rec = make_recording(session)
    result = log_upload_attempt(session, rec.id, "nextcloud", "a.flac", 1, True, None)
    assert result == audit_logger.AuditResult(inserted=True, recording_complete=False)
    assert not _uploaded(session, rec)
    set_config(session, "system", {"max_uploaders": 3})
    assert recompute_uploaded(session) == 1


def test_recompute_uploaded_after_deactivating_a_remote(session: Session) -> None:
    # given: two remotes; one has everything, the other lags
    make_remote(session, "nextcloud")
    make_remote(session, "usb")
    done_here = [make_recording(session) for _ in range(3)]
    deleted = make_recording(session, local_deleted=True)
    nowhere = make_recording(session)
    for rec in [*done_here, deleted]:
        assert not log_upload_attempt(
            session, rec.id, "nextcloud", "a", 1, True, None
        ).recording_complete
    assert recompute_uploaded(session) == 0
    # when: the lagging remote is deactivated
    _deactivate(session, "usb")
    # then: the sweep flags exactly the recordings complete under the new required set
    assert recompute_uploaded(session) == 3
    assert all(_uploaded(session, r) for r in done_here)
    assert not _uploaded(session, deleted) and not _uploaded(session, nowhere)
    assert recompute_uploaded(session) == 0


def test_already_uploaded_stays_uploaded_when_a_remote_is_added(session: Session) -> None:
    make_remote(session, "nextcloud")
    rec = make_recording(session)
    assert log_upload_attempt(session, rec.id, "nextcloud", "a", 1, True, None).recording_complete
    make_remote(session, "usb")
    result = log_upload_attempt(session, rec.id, "usb", "a", 1, False, "down")
    assert result.recording_complete and _uploaded(session, rec)


def _audit_success(
    factory: sessionmaker[Session],
    start: threading.Barrier,
    recording_id: int,
    slug: str,
    errors: list[BaseException],
) -> None:
    try:
        with factory() as s:
            s.execute(text("SELECT 1"))  # connection and transaction ready
            start.wait()
            log_upload_attempt(s, recording_id, slug, "a.flac", 1, True, None)
            s.commit()
    except BaseException as exc:  # surfaced by the test
        errors.append(exc)


def test_two_remotes_finishing_at_the_same_instant_always_complete(
    engine: Engine, session: Session
) -> None:
    make_remote(session, "nextcloud")
    make_remote(session, "usb")
    session.commit()
    factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
    for _ in range(50):
        rec = make_recording(session)
        session.commit()
        start = threading.Barrier(2, timeout=10)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_audit_success, args=(factory, start, rec.id, slug, errors))
            for slug in ("nextcloud", "usb")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors
        assert _uploaded(session, rec), f"recording {rec.id} left unflagged"
        assert _flagged_after_every_success(session, rec.id), f"recording {rec.id} dated early"
        session.commit()


def _flagged_after_every_success(session: Session, recording_id: int) -> bool:
    uploaded_at, last_success = session.execute(
        text(
            "SELECT r.uploaded_at, max(u.attempt_at) FROM recordings r JOIN uploads u"
            " ON u.recording_id = r.id AND u.success WHERE r.id = :r GROUP BY r.uploaded_at"
        ),
        {"r": recording_id},
    ).one()
    return bool(uploaded_at is not None and uploaded_at >= last_success)


def test_a_flag_is_never_dated_before_a_success_that_committed_first(
    engine: Engine, session: Session
) -> None:
    # given: the last remote's audit transaction began (its now() is fixed) before another
    # remote's success was written and committed - two workers, one recording
    make_remote(session, "nextcloud")
    make_remote(session, "usb")
    rec = make_recording(session)
    session.commit()
    factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
    with factory() as late, factory() as early:
        late.execute(text("SELECT now()"))
        early.execute(text("SELECT pg_sleep(0.01)"))
        log_upload_attempt(early, rec.id, "nextcloud", "a.flac", 1, True, None)
        early.commit()
        # when: the transaction that began first completes the recording
        assert log_upload_attempt(late, rec.id, "usb", "a.flac", 1, True, None).recording_complete
        late.commit()
    # then: the flag is dated after both successes (the Janitor's "all safe" moment)
    session.expire_all()
    assert _flagged_after_every_success(session, rec.id)


def test_the_sweep_never_dates_a_flag_before_a_success_that_committed_first(
    engine: Engine, session: Session
) -> None:
    make_remote(session, "nextcloud")
    make_remote(session, "usb")
    rec = make_recording(session)
    make_upload(session, rec.id, "nextcloud")
    session.commit()
    factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
    with factory() as sweep, factory() as other:
        sweep.execute(text("SELECT now()"))
        other.execute(text("SELECT pg_sleep(0.01)"))
        make_upload(other, rec.id, "usb")  # a success written without the completion rule
        other.commit()
        assert recompute_uploaded(sweep) == 1
        sweep.commit()
    session.expire_all()
    assert _flagged_after_every_success(session, rec.id)


# -- the Janitor's check ----------------------------------------------------------------------


def test_only_uploaded_recordings_are_deletable(session: Session) -> None:
    make_remote(session, "nextcloud")
    older, newer, pending = (make_recording(session) for _ in range(3))
    gone = make_recording(session, uploaded=True, local_deleted=True)
    for rec in (newer, older):
        log_upload_attempt(session, rec.id, "nextcloud", "a", 1, True, None)
    assert audit_logger.is_deletable(session, older.id)
    assert not audit_logger.is_deletable(session, pending.id)
    listed = audit_logger.list_deletable(session, 10)
    assert [d.recording_id for d in listed] == [older.id, newer.id]
    assert listed[0].file_raw == older.file_raw
    assert gone.id not in {d.recording_id for d in listed}
    assert len(audit_logger.list_deletable(session, 1)) == 1
