"""Issue 4's behaviours on the real stack: crashes, outages, restarts, bad input, two workers
on one queue, a backlog, pause and window. Each test ends by checking the ledger: every pair
uploaded once, no second success row, no recording flagged before every required remote has it.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from silvasonic_uploader.cli.local_servers import LocalRedis
from tests.factories import make_recording
from tests.fixtures.remote_servers import RemoteServer
from tests.fixtures.stack import Stack, wait_until
from tests.integration.e2e_helpers import (
    duplicate_success_pairs,
    early_flags,
    scalar,
    seed_station,
    set_uploader,
    success_rows,
    uploaded_count,
    uploaded_files,
)


def _local(folder: Path) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"type": "local", "target_path": str(folder)}


def _ledger_is_clean(engine: Engine) -> None:
    assert duplicate_success_pairs(engine) == 0
    assert early_flags(engine) == 0


def test_kill_9_worker_during_upload(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    """A worker killed mid-upload: after a restart every pair has exactly one success row."""
    archive = tmp_path / "archive"
    ids = seed_station(
        engine,
        stack.workspace,
        recordings=6,
        seconds=4,
        remotes={"archive": _local(archive)},
        uploader={"bandwidth_limit": "100k", "batch_size": 6},
    )
    stack.start_worker("archive")
    stack.start_dispatcher()
    # wait until an upload is under way (a partial file appears or the first one lands)
    assert wait_until(
        lambda: (
            any(archive.rglob("*"))
            and scalar(engine, "SELECT count(*) FROM pair_state WHERE lease_token IS NOT NULL") > 0
        ),
        60,
    )
    time.sleep(1.0)
    stack.kill("worker-archive", signal.SIGKILL)
    done_before = success_rows(engine)
    assert done_before < len(ids)
    stack.start_worker("archive", name="worker-archive-2")
    assert wait_until(lambda: success_rows(engine, "archive") == len(ids), 150)
    _ledger_is_clean(engine)
    assert uploaded_count(engine) == len(ids)
    assert len(uploaded_files(archive)) == len(ids)


def test_redis_restarted_empty_mid_run(
    engine: Engine, stack: Stack, tmp_path: Path, private_redis: LocalRedis
) -> None:
    """Redis comes back with nothing (persistence off): leases are released, work re-sent.
    (The consumer hang this test used to hit now and then is made certain, and fixed, in
    test_consumer_recovery.py.)"""
    stack.redis_url = private_redis.url(0)
    archive = tmp_path / "archive"
    ids = seed_station(
        engine,
        stack.workspace,
        recordings=12,
        seconds=2,
        remotes={"archive": _local(archive)},
        # ≈ 2 s per pair: the restart must land mid-run (checked below), also now that a
        # worker sends one pair while it encodes the next
        uploader={"bandwidth_limit": "50k", "batch_size": 12},
    )
    stack.start_worker("archive")
    stack.start_dispatcher()
    # a batch's audit steps queue behind its uploads, so success rows come late and together:
    # restart once files have reached the remote, while steps are still queued in Redis
    assert wait_until(lambda: len(uploaded_files(archive)) >= 2, 90)
    assert success_rows(engine, "archive") < len(ids), "the restart would not be mid-run"
    private_redis.kill()
    private_redis.start()  # same port, empty
    assert wait_until(lambda: success_rows(engine, "archive") == len(ids), 180)
    _ledger_is_clean(engine)


def test_corrupt_wav_is_parked_and_never_holds_up_the_queue(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    ids = seed_station(
        engine,
        stack.workspace,
        recordings=4,
        remotes={"archive": _local(archive)},
        uploader={"max_file_attempts": 2},
    )
    with Session(engine) as s:
        bad = make_recording(s)
        (stack.workspace / bad.file_raw).parent.mkdir(parents=True, exist_ok=True)
        (stack.workspace / bad.file_raw).write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
        bad_id = bad.id
        s.commit()
    stack.start_worker("archive")
    stack.start_dispatcher()
    assert wait_until(lambda: success_rows(engine, "archive") == len(ids), 90)
    assert wait_until(
        lambda: (
            scalar(
                engine,
                "SELECT count(*) FROM pair_state WHERE recording_id=:r AND parked_until > now()",
                r=bad_id,
            )
            == 1
        ),
        60,
    )
    failures = scalar(
        engine,
        "SELECT count(*) FROM uploads WHERE recording_id=:r AND NOT success AND error_kind='file'",
        r=bad_id,
    )
    assert failures == 2
    time.sleep(3)  # parked: not tried again
    assert scalar(engine, "SELECT count(*) FROM uploads WHERE recording_id=:r", r=bad_id) == 2
    assert scalar(engine, "SELECT uploaded FROM recordings WHERE id=:r", r=bad_id) is False


def test_two_workers_on_one_queue_never_upload_a_pair_twice(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    ids = seed_station(engine, stack.workspace, recordings=30, remotes={"archive": _local(archive)})
    stack.start_worker("archive", name="worker-a")
    stack.start_worker("archive", name="worker-b")
    stack.start_dispatcher()
    assert wait_until(lambda: success_rows(engine, "archive") == len(ids), 120)
    _ledger_is_clean(engine)
    assert scalar(engine, "SELECT count(*) FROM uploads WHERE NOT success") == 0
    # each upload was logged by exactly one worker
    logged = [
        stack.logs("worker-a").count('"upload.completed"'),
        stack.logs("worker-b").count('"upload.completed"'),
    ]
    assert sum(logged) == len(ids)


def test_backlog_drains_without_waiting_a_poll_interval_per_batch(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    """200 pairs, batch 20, poll interval 600 s: without top-ups this takes ≥ 9 poll intervals
    (90 minutes); with them it drains at the speed of the worker."""
    archive = tmp_path / "archive"
    ids = seed_station(
        engine,
        stack.workspace,
        recordings=200,
        seconds=0.2,
        remotes={"archive": _local(archive)},
        uploader={"poll_interval": 600, "batch_size": 20},
    )
    stack.start_worker("archive")
    stack.start_dispatcher()
    # a generous "eventually": half a poll interval, far less than the 9 it takes by polling
    assert wait_until(lambda: success_rows(engine, "archive") == len(ids), 300)
    _ledger_is_clean(engine)


def test_pause_stops_dispatch_and_never_flags_early(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ids = seed_station(
        engine,
        stack.workspace,
        recordings=20,
        seconds=1,
        remotes={"nextcloud": _local(a), "usb": _local(b)},
        uploader={"batch_size": 2, "bandwidth_limit": "200k"},
    )
    stack.start_worker("nextcloud")
    stack.start_worker("usb")
    stack.start_dispatcher()
    assert wait_until(lambda: success_rows(engine) >= 2, 90)
    set_uploader(engine, enabled=False)
    # in-flight work ends, then nothing moves
    assert wait_until(
        lambda: scalar(engine, "SELECT count(*) FROM pair_state WHERE lease_until > now()") == 0, 60
    )
    settled = success_rows(engine)
    time.sleep(4)
    assert success_rows(engine) == settled < 2 * len(ids)
    _ledger_is_clean(engine)
    set_uploader(engine, enabled=True)
    assert wait_until(lambda: uploaded_count(engine) == len(ids), 150)
    _ledger_is_clean(engine)


def test_schedule_window_stops_dispatch(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    hour = datetime.now(UTC).hour
    closed = {"schedule_start_hour": (hour + 2) % 24, "schedule_end_hour": (hour + 3) % 24}
    archive = tmp_path / "archive"
    ids = seed_station(
        engine, stack.workspace, recordings=3, remotes={"archive": _local(archive)}, uploader=closed
    )
    stack.start_worker("archive")
    stack.start_dispatcher()
    time.sleep(5)
    assert success_rows(engine) == 0
    assert scalar(engine, "SELECT count(*) FROM pair_state") == 0
    set_uploader(engine, schedule_start_hour=hour, schedule_end_hour=(hour + 1) % 24)
    assert wait_until(lambda: success_rows(engine, "archive") == len(ids), 60)


def test_remote_change_applies_without_restart(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    """A worker rereads its remote per task: a new target folder is used at once, and the
    recordings uploaded to the old one are uploaded again to the new one (success counts only
    at the remote's current destination)."""
    from sqlalchemy import text

    from tests.factories import make_recording_with_wav

    first, second = tmp_path / "first", tmp_path / "second"
    seed_station(engine, stack.workspace, recordings=2, remotes={"archive": _local(first)})
    stack.start_worker("archive")
    stack.start_dispatcher()
    assert wait_until(lambda: success_rows(engine) == 2, 60)
    second.mkdir()
    with engine.begin() as conn:
        conn.execute(text("UPDATE storage_remotes SET target_path=:p"), {"p": str(second)})
    with Session(engine) as s:
        make_recording_with_wav(s, stack.workspace, seconds=0.5)
        s.commit()
    assert wait_until(lambda: len(uploaded_files(second)) == 3, 60)
    assert len(uploaded_files(first)) == 2


def test_remote_down_for_a_while(
    engine: Engine, stack: Stack, tmp_path: Path, webdav_server: RemoteServer
) -> None:
    """Connection failures: bounded attempts, no file penalised or parked, the remote reported
    unavailable, and uploads resume soon after it returns."""
    import json

    import redis

    archive = tmp_path / "archive"
    dav = {
        "type": "webdav",
        "config": webdav_server.config,
        "target_path": webdav_server.target_path,
    }
    ids = seed_station(
        engine,
        stack.workspace,
        recordings=10,
        seconds=0.5,
        remotes={"nextcloud": dav, "usb": _local(archive)},
        uploader={"batch_size": 4},
    )
    webdav_server.stop()
    stack.start_worker("nextcloud")
    stack.start_worker("usb")
    stack.start_dispatcher()
    # the local remote is unaffected; the WebDAV one is marked unavailable
    assert wait_until(lambda: success_rows(engine, "usb") == len(ids), 90)
    assert wait_until(
        lambda: (
            scalar(
                engine,
                "SELECT count(*) FROM remote_status WHERE remote_slug='nextcloud' "
                "AND state='unavailable'",
            )
            == 1
        ),
        60,
    )
    client = redis.Redis.from_url(stack.redis_url)
    assert wait_until(
        lambda: (
            json.loads(client.get("silvasonic:status:nextcloud") or b"{}")
            .get("meta", {})
            .get("remote_state")
            == "unavailable"
        ),
        30,
    )
    time.sleep(8)  # a while of outage: only the probe pair keeps knocking
    attempts = scalar(engine, "SELECT count(*) FROM uploads WHERE remote_slug='nextcloud'")
    assert 1 <= attempts <= 30
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM uploads WHERE remote_slug='nextcloud' "
            "AND error_kind <> 'connection'",
        )
        == 0
    )
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM pair_state WHERE remote_slug='nextcloud' "
            "AND (file_failures > 0 OR parked_until IS NOT NULL)",
        )
        == 0
    )
    assert uploaded_count(engine) == 0  # nothing is flagged while one remote lacks it
    # the remote comes back: everything flows again
    webdav_server.start()
    assert wait_until(lambda: success_rows(engine, "nextcloud") == len(ids), 90)
    assert wait_until(
        lambda: (
            scalar(
                engine,
                "SELECT count(*) FROM remote_status WHERE remote_slug='nextcloud' AND state='ok'",
            )
            == 1
        ),
        30,
    )
    assert uploaded_count(engine) == len(ids)
    assert len(list((webdav_server.root / "archive").rglob("*.flac"))) == len(ids)
    _ledger_is_clean(engine)


def test_sigterm_returns_in_flight_work_and_exits_0(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    """Soft shutdown: the upload under way goes back to the queue; a new worker finishes it."""
    archive = tmp_path / "archive"
    ids = seed_station(
        engine,
        stack.workspace,
        recordings=3,
        seconds=6,
        remotes={"archive": _local(archive)},
        uploader={"bandwidth_limit": "60k", "batch_size": 3},
    )
    stack.start_worker("archive")
    stack.start_dispatcher()
    assert wait_until(
        lambda: scalar(engine, "SELECT count(*) FROM pair_state WHERE lease_token IS NOT NULL") > 0,
        60,
    )
    time.sleep(2.0)  # an upload is running (about 5 s per file at this limit)
    assert stack.stop("worker-archive", timeout_s=30) == 0
    stack.start_worker("archive", name="worker-archive-2")
    assert wait_until(lambda: success_rows(engine, "archive") == len(ids), 120)
    _ledger_is_clean(engine)


def test_two_dispatchers_one_schedules(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    """Two `beat` processes: redbeat's lock lets one schedule while the other waits; the
    standby takes over when the leader dies (lock timeout shortened here)."""
    from tests.factories import make_recording_with_wav

    archive = tmp_path / "archive"
    seed_station(engine, stack.workspace, recordings=2, remotes={"archive": _local(archive)})
    fast_lock = {"SILVASONIC_REDBEAT_LOCK_TIMEOUT_S": "6"}
    stack.start_dispatcher("beat-a", loglevel="INFO", **fast_lock)
    assert wait_until(lambda: "beat: Acquired lock" in stack.logs("beat-a"), 30)
    stack.start_dispatcher("beat-b", loglevel="INFO", **fast_lock)
    stack.start_worker("archive")
    assert wait_until(lambda: success_rows(engine, "archive") == 2, 60)
    assert "beat: Acquired lock" not in stack.logs("beat-b")  # the standby waits
    # the leader dies: the standby takes the lock and new work is still dispatched
    stack.kill("beat-a")
    assert wait_until(lambda: "beat: Acquired lock" in stack.logs("beat-b"), 60)
    with Session(engine) as s:
        make_recording_with_wav(s, stack.workspace, seconds=0.5)
        s.commit()
    assert wait_until(lambda: success_rows(engine, "archive") == 3, 90)
