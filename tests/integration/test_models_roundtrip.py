"""The models on real PostgreSQL: rows round-trip with their FKs and server defaults, FK
violations are refused, and the two unique partial indexes on ``uploads`` hold (exactly one
success row per pair; one row per attempt key)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tests.factories import make_device, make_recording, make_remote
from uploader.db.models import (
    Device,
    MicrophoneProfile,
    PairState,
    Recording,
    RemoteCursor,
    RemoteStatus,
    StorageRemote,
    SystemConfig,
    Upload,
)

T0 = datetime(2026, 3, 26, 1, 35, tzinfo=UTC)


def _upload(
    recording_id: int, remote_slug: str, *, success: bool, attempt_at: datetime = T0, **kw: object
) -> Upload:
    return Upload(
        recording_id=recording_id,
        remote_slug=remote_slug,
        attempt_at=attempt_at,
        filename="a.flac",
        size=123,
        success=success,
        **kw,
    )


@pytest.fixture
def fresh(engine: Engine) -> Callable[[], Session]:
    """A second session, so reads come from the database, not the first session's identity map."""
    return sessionmaker(engine, expire_on_commit=False)


def _refused(session: Session, *rows: object) -> IntegrityError:
    session.add_all(rows)
    with pytest.raises(IntegrityError) as info:
        session.flush()
    session.rollback()
    return info.value


def test_device_recording_remote_upload_round_trip(
    session: Session, fresh: Callable[[], Session]
) -> None:
    # given
    session.add(MicrophoneProfile(slug="ultramic-384-evo", name="UltraMic 384 EVO"))
    session.flush()
    session.add(
        Device(
            name="0869-0389-ABCD",
            serial_number="ABCD",
            model="UltraMic",
            config={"usb_serial": "ABCD"},
            profile_slug="ultramic-384-evo",
            workspace_name="ultramic-384-evo-abcd",
        )
    )
    session.flush()
    rec = make_recording(session, sensor_id="0869-0389-ABCD", time=T0)
    make_remote(
        session, "nextcloud-main", type="webdav", config={"url": "u", "user": "x", "pass": "enc:y"}
    )
    session.add(
        _upload(
            rec.id, "nextcloud-main", success=True, remote_path="silvasonic/a.flac", duration_s=1.5
        )
    )
    session.commit()

    # when
    with fresh() as s:
        device = s.get(Device, "0869-0389-ABCD")
        recording = s.get(Recording, rec.id)
        remote = s.get(StorageRemote, "nextcloud-main")
        (upload,) = s.scalars(select(Upload)).all()

    # then
    assert device is not None and device.profile_slug == "ultramic-384-evo"
    assert (device.status, device.enrollment_status, device.enabled) == ("offline", "pending", True)
    assert recording is not None
    assert recording.sensor_id == "0869-0389-ABCD"
    assert recording.time == T0
    assert (recording.uploaded, recording.uploaded_at, recording.local_deleted) == (
        False,
        None,
        False,
    )
    assert recording.filesize_processed == 0
    assert recording.analysis_state == {} and recording.upload_info == {}
    assert remote is not None
    assert remote.is_active is True
    assert remote.config == {"url": "u", "user": "x", "pass": "enc:y"}
    assert remote.created_at is not None and remote.updated_at is not None
    assert upload.recording_id == rec.id and upload.remote_slug == "nextcloud-main"
    assert upload.attempt_at == T0 and upload.success is True
    assert (upload.remote_path, upload.duration_s) == ("silvasonic/a.flac", 1.5)
    assert (upload.error_message, upload.error_kind, upload.attempt_key) == (None, None, None)


def test_profile_defaults(session: Session, fresh: Callable[[], Session]) -> None:
    session.add(MicrophoneProfile(slug="generic", name="Generic"))
    session.commit()
    with fresh() as s:
        profile = s.get(MicrophoneProfile, "generic")
    assert profile is not None and (profile.config, profile.is_system) == ({}, False)


def test_system_config_round_trip_and_updated_at(
    session: Session, fresh: Callable[[], Session]
) -> None:
    session.add(SystemConfig(key="uploader", value={"enabled": False, "poll_interval": 60}))
    session.commit()
    row = session.get(SystemConfig, "uploader")
    assert row is not None
    first = row.updated_at
    row.value = {"enabled": True}
    session.commit()
    with fresh() as s:
        again = s.get(SystemConfig, "uploader")
    assert again is not None and again.value == {"enabled": True}
    assert again.updated_at > first  # onupdate=now(): a new transaction, a later time


def test_storage_remote_updated_at_moves_on_update(session: Session) -> None:
    remote = make_remote(session, "nas")
    session.commit()
    created, updated = remote.created_at, remote.updated_at
    remote.name = "Garage NAS"
    session.commit()
    session.refresh(remote)
    assert remote.created_at == created
    assert updated is not None and remote.updated_at is not None and remote.updated_at > updated


def test_an_upload_needs_its_recording(session: Session) -> None:
    rec = make_recording(session)
    make_remote(session, "nas")
    session.commit()
    err = _refused(session, _upload(rec.id + 1000, "nas", success=True))
    assert "foreign key" in str(err.orig)


def test_recording_needs_its_device(session: Session) -> None:
    rec = Recording(
        time=T0,
        sensor_id="not-a-device",
        file_raw="x/data/raw/a.wav",
        duration=10.0,
        sample_rate=48000,
        filesize_raw=1,
    )
    assert "foreign key" in str(_refused(session, rec).orig)


def test_device_profile_must_exist(session: Session) -> None:
    dev = Device(name="d", serial_number="s", model="m", config={}, profile_slug="missing")
    assert "foreign key" in str(_refused(session, dev).orig)


def test_device_serial_and_workspace_are_unique(session: Session) -> None:
    make_device(session, "mic-a")
    session.commit()
    dup = Device(name="mic-b", serial_number="SER-mic-a", model="m", config={})
    assert "unique" in str(_refused(session, dup).orig).lower()
    dup_ws = Device(
        name="mic-c", serial_number="other", model="m", config={}, workspace_name="mic-a"
    )
    assert "unique" in str(_refused(session, dup_ws).orig).lower()


def test_upload_needs_attempt_at(session: Session) -> None:
    # no SQL default at SEED-ERA: the writer always sets it
    rec = make_recording(session)
    make_remote(session, "nas")
    session.commit()
    upload = Upload(
        recording_id=rec.id, remote_slug="nas", filename="a.flac", size=1, success=False
    )
    assert "attempt_at" in str(_refused(session, upload).orig)


def test_the_audit_outlives_a_removed_remote(session: Session) -> None:
    # migration 0004 dropped uploads' foreign key to storage_remotes: a remote that only ever
    # failed may be removed (`remotes remove` refuses one with success rows) and its rows stay
    rec = make_recording(session)
    remote = make_remote(session, "typo")
    session.add(_upload(rec.id, "typo", success=False))
    session.commit()
    session.delete(remote)
    session.commit()
    kept = session.execute(text("SELECT count(*) FROM uploads WHERE remote_slug = 'typo'"))
    assert kept.scalar_one() == 1


def test_one_success_row_per_pair(session: Session) -> None:
    rec = make_recording(session)
    make_remote(session, "nas")
    make_remote(session, "s3-box")
    session.add(_upload(rec.id, "nas", success=True))
    session.commit()

    err = _refused(session, _upload(rec.id, "nas", success=True, attempt_at=T0 + timedelta(1)))
    assert "uq_uploads_success_pair" in str(err.orig)


def test_failures_and_other_remotes_are_not_limited(session: Session) -> None:
    rec = make_recording(session)
    other = make_recording(session)
    make_remote(session, "nas")
    make_remote(session, "s3-box")
    session.add_all(
        [
            _upload(rec.id, "nas", success=False, error_kind="connection"),
            _upload(rec.id, "nas", success=False, error_kind="connection"),
            _upload(rec.id, "nas", success=True),
            _upload(rec.id, "nas", success=False, error_kind="file"),  # a later failure still fits
            _upload(rec.id, "s3-box", success=True),
            _upload(other.id, "nas", success=True),
        ]
    )
    session.commit()
    assert session.scalar(select(func.count()).select_from(Upload)) == 6


def test_one_row_per_attempt_key(session: Session) -> None:
    rec = make_recording(session)
    make_remote(session, "nas")
    key = f"{rec.id}:nas:{uuid.uuid4()}"
    session.add(_upload(rec.id, "nas", success=False, attempt_key=key))
    session.add_all(
        [_upload(rec.id, "nas", success=False) for _ in range(2)]
    )  # NULL keys: any number
    session.commit()

    err = _refused(session, _upload(rec.id, "nas", success=False, attempt_key=key))
    assert "uq_uploads_attempt_key" in str(err.orig)


def test_bookkeeping_rows_go_with_their_remote(
    session: Session, fresh: Callable[[], Session]
) -> None:
    # pair_state, remote_cursor and remote_status cascade on the remote (it has no uploads)
    rec = make_recording(session)
    remote = make_remote(session, "nas")
    token = uuid.uuid4()
    session.add_all(
        [
            PairState(recording_id=rec.id, remote_slug="nas", lease_token=token, lease_until=T0),
            RemoteCursor(remote_slug="nas", last_recording_id=rec.id),
            RemoteStatus(remote_slug="nas", state="unavailable", detail="dial tcp: refused"),
        ]
    )
    session.commit()
    with fresh() as s:
        pair = s.get(PairState, (rec.id, "nas"))
        status = s.get(RemoteStatus, "nas")
    assert pair is not None and pair.lease_token == token and pair.file_failures == 0
    assert status is not None and status.since is not None

    session.delete(remote)
    session.commit()
    with fresh() as s:
        assert s.scalar(select(func.count()).select_from(PairState)) == 0
        assert s.scalar(select(func.count()).select_from(RemoteCursor)) == 0
        assert s.scalar(select(func.count()).select_from(RemoteStatus)) == 0
