"""The seed's pipeline table, end to end: real PostgreSQL, Redis, worker and dispatcher
processes (prefork), ffmpeg/libFLAC and rclone, remotes on this machine.

The seed's ``test_full_pipeline_mock_rclone`` runs here with the real rclone (no mocks in
integration tests, docs/design/0009-targets.md)."""

from __future__ import annotations

from pathlib import Path

import redis
import soundfile as sf
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.factories import make_recording, make_remote, make_upload
from tests.fixtures.stack import Stack, wait_until
from tests.integration.e2e_helpers import (
    duplicate_success_pairs,
    early_flags,
    scalar,
    seed_station,
    success_rows,
    uploaded_count,
    uploaded_files,
)


def _local(folder: Path) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"type": "local", "target_path": str(folder)}


def test_full_pipeline(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    # given a station with 5 recordings and one local remote
    archive = tmp_path / "archive"
    ids = seed_station(engine, stack.workspace, recordings=5, remotes={"archive": _local(archive)})
    # when the dispatcher and the remote's worker run
    stack.start_worker("archive")
    stack.start_dispatcher()
    # then every recording is on the remote as FLAC, audited, and flagged for the Janitor
    assert wait_until(lambda: uploaded_count(engine) == 5, 90)
    files = uploaded_files(archive)
    assert len(files) == 5
    assert all(
        "/silvasonic/silvasonic-test/ultramic-384-evo-034f/2026-03-26/" in str(f) for f in files
    )
    data, rate = sf.read(str(files[0]))
    assert rate == 48000 and len(data) == 48000
    assert success_rows(engine, "archive") == 5
    assert duplicate_success_pairs(engine) == 0
    assert scalar(engine, "SELECT count(*) FROM pair_state") == 0
    assert scalar(engine, "SELECT count(*) FROM recordings WHERE uploaded_at IS NULL") == 0
    with Session(engine) as s:
        audited = sorted(r for (r,) in s.execute(text("SELECT recording_id FROM uploads")))
    assert audited == sorted(ids)
    # and the temp FLACs are gone
    assert not list(stack.temp_root.rglob("*.flac"))
    # and nothing ever went to the default queue, which nobody consumes
    assert redis.Redis.from_url(stack.redis_url).llen("celery") == 0


def test_pipeline_skips_already_uploaded_to_this_remote(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    ids = seed_station(engine, stack.workspace, recordings=3, remotes={"archive": _local(archive)})
    with Session(engine) as s:
        make_upload(s, ids[0], "archive")
        s.commit()
    stack.start_worker("archive")
    stack.start_dispatcher()
    assert wait_until(lambda: success_rows(engine, "archive") == 3, 90)
    assert len(uploaded_files(archive)) == 2  # the first one was never sent again
    assert scalar(engine, "SELECT count(*) FROM uploads WHERE recording_id = :r", r=ids[0]) == 1


def test_pipeline_still_uploads_to_other_remote(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ids = seed_station(
        engine,
        stack.workspace,
        recordings=2,
        remotes={"nextcloud": _local(a), "s3-archive": _local(b)},
    )
    with Session(engine) as s:  # nextcloud already has both
        for r in ids:
            make_upload(s, r, "nextcloud")
        s.commit()
    stack.start_worker("s3-archive")
    stack.start_dispatcher()
    assert wait_until(lambda: success_rows(engine, "s3-archive") == 2, 90)
    assert len(uploaded_files(b)) == 2 and not uploaded_files(a)
    assert uploaded_count(engine) == 2  # both remotes have them now


def test_pipeline_handles_missing_file(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    seed_station(
        engine,
        stack.workspace,
        recordings=3,
        remotes={"archive": _local(archive)},
        uploader={"max_file_attempts": 1},
    )
    with Session(engine) as s:  # a recording whose WAV is gone (not local_deleted)
        missing = make_recording(s).id
        gone = make_recording(s, local_deleted=True).id
        s.commit()
    stack.start_worker("archive")
    stack.start_dispatcher()
    assert wait_until(lambda: success_rows(engine, "archive") == 3, 90)
    assert wait_until(
        lambda: (
            scalar(
                engine,
                "SELECT count(*) FROM pair_state WHERE recording_id = :r AND parked_until IS NOT NULL",
                r=missing,
            )
            == 1
        ),
        30,
    )
    row = (
        Session(engine)
        .execute(
            text("SELECT success, error_kind, error_message FROM uploads WHERE recording_id = :r"),
            {"r": missing},
        )
        .one()
    )
    assert row.success is False and row.error_kind == "file" and "not found" in row.error_message
    assert scalar(engine, "SELECT count(*) FROM uploads WHERE recording_id = :r", r=gone) == 0
    assert scalar(engine, "SELECT uploaded FROM recordings WHERE id = :r", r=missing) is False


def test_uploaded_flag_set_as_janitor_signal(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    seed_station(
        engine, stack.workspace, recordings=3, remotes={"nextcloud": _local(a), "usb": _local(b)}
    )
    # one remote alone never flags anything
    stack.start_worker("nextcloud")
    stack.start_dispatcher()
    assert wait_until(lambda: success_rows(engine, "nextcloud") == 3, 90)
    assert uploaded_count(engine) == 0
    # the second remote completes them; only now the Janitor may delete
    stack.start_worker("usb")
    assert wait_until(lambda: uploaded_count(engine) == 3, 90)
    assert early_flags(engine) == 0
    assert (
        scalar(engine, "SELECT count(*) FROM recordings WHERE uploaded AND uploaded_at IS NULL")
        == 0
    )


def test_inactive_remotes_ignored_for_uploaded_flag(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    a = tmp_path / "a"
    with Session(engine) as s:
        make_remote(s, "old-usb", type="local", target_path=str(tmp_path / "old"), is_active=False)
        s.commit()
    seed_station(engine, stack.workspace, recordings=2, remotes={"nextcloud": _local(a)})
    stack.start_worker("nextcloud")
    stack.start_dispatcher()
    assert wait_until(lambda: uploaded_count(engine) == 2, 90)
    assert success_rows(engine, "old-usb") == 0
