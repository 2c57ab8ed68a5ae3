"""The Janitor contract in our form (seed Phase 4 ``test_janitor_respects_uploaded_flag``):
what ``silvasonic-uploader status --deletable`` lists — ``audit_logger.list_deletable`` — is a
recording only once every required remote holds it, never one that some remote still lacks.

The recordings are completed through the real audit path (``log_upload_attempt``), not by
setting the flag by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tests.factories import make_recording, make_remote, set_config

audit_logger = pytest.importorskip(
    "uploader.completion.audit_logger",
    reason="uploader/completion/audit_logger.py (list_deletable) is not here yet",
)
if not hasattr(audit_logger, "list_deletable"):  # pragma: no cover - depends on the tree
    pytest.skip("audit_logger.list_deletable is not here yet", allow_module_level=True)


def deletable_ids(session: Session) -> list[int]:
    return [d.recording_id for d in audit_logger.list_deletable(session, limit=100)]


def succeed(session: Session, recording_id: int, slug: str) -> None:
    audit_logger.log_upload_attempt(
        session, recording_id, slug, f"{recording_id}.flac", 1000, True, None
    )


def fail(session: Session, recording_id: int, slug: str) -> None:
    audit_logger.log_upload_attempt(
        session, recording_id, slug, f"{recording_id}.flac", 1000, False, "remote said no",
        attempt_key=f"{recording_id}:{slug}:0",
    )  # fmt: skip


@pytest.fixture
def two_remotes(session: Session, tmp_path: Path) -> None:
    for slug in ("nextcloud", "usb"):
        make_remote(session, slug, type="local", target_path=str(tmp_path / slug))


@pytest.mark.usefixtures("two_remotes")
def test_janitor_respects_uploaded_flag(session: Session) -> None:
    # given: one recording on both remotes, one on one remote (the other failed), one untried
    both, one, none = (make_recording(session).id for _ in range(3))
    succeed(session, both, "nextcloud")
    succeed(session, both, "usb")
    succeed(session, one, "nextcloud")
    fail(session, one, "usb")
    session.commit()

    # then: only the complete one may be deleted
    assert deletable_ids(session) == [both]

    # when: the missing remote gets it too, the recording becomes deletable
    succeed(session, one, "usb")
    session.commit()
    assert deletable_ids(session) == [both, one]
    assert none not in deletable_ids(session)


@pytest.mark.usefixtures("two_remotes")
def test_already_deleted_recordings_are_not_listed(session: Session) -> None:
    gone = make_recording(session, local_deleted=True).id
    succeed(session, gone, "nextcloud")
    succeed(session, gone, "usb")
    session.commit()

    assert deletable_ids(session) == []


@pytest.mark.usefixtures("two_remotes")
def test_global_pause_makes_nothing_deletable_early(session: Session) -> None:
    # paused remotes stay required: one success out of two is not enough
    set_config(session, "uploader", {"enabled": False})
    rec = make_recording(session).id
    succeed(session, rec, "nextcloud")
    session.commit()

    assert deletable_ids(session) == []


def test_no_required_remote_makes_nothing_deletable(session: Session, tmp_path: Path) -> None:
    make_remote(session, "old", type="local", target_path=str(tmp_path / "old"), is_active=False)
    rec = make_recording(session).id
    succeed(session, rec, "old")
    session.commit()

    assert deletable_ids(session) == []
