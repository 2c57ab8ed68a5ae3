"""Uploads started ahead of their step (``uploader.pipeline.transfer_ahead``), against real rclone rcd
daemons and a real WebDAV server on 127.0.0.1: the waiting step gets the same result its own
transfer would have, never a stale one, and nothing transfers that nobody waits for."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.factories import write_wav
from tests.fixtures.remote_servers import RemoteServer, StallingServer
from uploader.ledger.evidence import Encoded
from uploader.ledger.pair_lock import pair_lock
from uploader.pipeline import transfer_ahead
from uploader.pipeline.steps import (
    PairJob,
    RemoteSnapshot,
    WorkerContext,
    ensure_flac,
    remote_path_for,
)
from uploader.pipeline.transfer_ahead import TransfersAhead
from uploader.rclone.client import PendingUpload, RcloneClient, RcloneErrorKind

DAY = "silvasonic/test-station/mic-1/2026-11-26"


@pytest.fixture
def client(webdav_server: RemoteServer) -> Iterator[RcloneClient]:
    c = RcloneClient("ahead", "webdav", dict(webdav_server.config), "archive", transport="rcd")
    yield c
    c.close()


def a_file(tmp_path: Path, name: str, size: int = 200_000) -> Path:
    path = tmp_path / "outbox" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def begun(
    client: RcloneClient, local: Path, path: str, bwlimit: str | None = None
) -> PendingUpload:
    pending = client.begin_upload(local, path, bwlimit)
    assert pending is not None
    return pending


def job_state(client: RcloneClient, pending: PendingUpload) -> dict[str, object]:
    return pending.daemon.rc("job/status", jobid=pending.jobid)


def test_a_transfer_started_ahead_is_the_upload(
    client: RcloneClient, webdav_server: RemoteServer, tmp_path: Path
) -> None:
    # given a transfer started ahead
    local = a_file(tmp_path, "a.flac")
    path = f"archive/{DAY}/a.flac"
    pending = begun(client, local, path)

    # when its step waits for it
    result = client.finish_upload(pending)

    # then it is a success with the file's size, the remote has exactly the bytes, and the
    # step ran no transfer of its own (the daemon's last job is the one started ahead)
    assert result is not None and result.success, result
    assert result.bytes_transferred == local.stat().st_size
    assert webdav_server.uploaded(path).read_bytes() == local.read_bytes()
    assert client.daemon is not None and client.daemon.last_jobid == pending.jobid


def test_a_file_changed_since_is_not_trusted(
    client: RcloneClient, webdav_server: RemoteServer, tmp_path: Path
) -> None:
    # given a transfer started ahead, after which the FLAC was rewritten (re-encoded)
    local = a_file(tmp_path, "b.flac")
    path = f"archive/{DAY}/b.flac"
    pending = begun(client, local, path)
    time.sleep(0.01)
    local.write_bytes(os.urandom(150_000))

    # then waiting for it gives nothing, and a fresh upload sends the new bytes
    assert client.finish_upload(pending) is None
    assert client.upload_file(local, path).success
    assert webdav_server.uploaded(path).read_bytes() == local.read_bytes()


def test_a_restarted_daemon_invalidates_what_it_was_sending(
    client: RcloneClient, tmp_path: Path
) -> None:
    # given a transfer started ahead, then the daemon is gone (config changed, idle stop)
    local = a_file(tmp_path, "c.flac")
    pending = begun(client, local, f"archive/{DAY}/c.flac")
    client.close()

    # then its step must run its own transfer
    assert client.finish_upload(pending) is None


def test_a_failure_is_classified_like_the_steps_own(
    stalling_server: StallingServer, tmp_path: Path
) -> None:
    # given a remote that accepts and never answers, and a 2 s base hard limit
    c = RcloneClient(
        "stall",
        "webdav",
        {"url": stalling_server.url, "user": "u", "pass": "stalled-password"},
        "archive",
        transport="rcd",
        hard_limit_base_s=2.0,
    )
    try:
        local = a_file(tmp_path, "d.flac", size=10_000)
        started = time.monotonic()
        pending = begun(c, local, f"archive/{DAY}/d.flac")
        time.sleep(1.0)  # the step comes a second later: the limit counts from the start

        # when the step waits
        result = c.finish_upload(pending)

        # then it is the connection error of the hard limit, and the job is stopped
        assert result is not None and result.error_kind is RcloneErrorKind.CONNECTION, result
        assert "hard limit" in (result.error_message or "")
        assert time.monotonic() - started < 2.0 + 8.0
        state = job_state(c, pending)
        assert state["finished"] is True and state["success"] is False
    finally:
        c.close()


def test_an_abandoned_transfer_is_stopped(
    client: RcloneClient, webdav_server: RemoteServer, tmp_path: Path
) -> None:
    # given a transfer of about 10 s (400 KiB at 40 KiB/s) started ahead
    client.start("40k")
    local = a_file(tmp_path, "e.flac", size=400 * 1024)
    path = f"archive/{DAY}/e.flac"
    pending = begun(client, local, path, "40k")
    assert client.upload_running(pending)

    # when nobody will wait for it (its lease was lost)
    client.abandon_upload(pending)

    # then the daemon no longer sends it, and the daemon serves the next upload
    state = job_state(client, pending)
    assert state["finished"] is True and state["success"] is False
    assert not client.upload_running(pending)
    target = webdav_server.uploaded(path)
    size = target.stat().st_size if target.exists() else 0
    time.sleep(1.0)
    assert (target.stat().st_size if target.exists() else 0) == size
    assert client.upload_file(a_file(tmp_path, "f.flac"), f"archive/{DAY}/f.flac", "40k").success


def test_cli_transport_starts_nothing_ahead(webdav_server: RemoteServer, tmp_path: Path) -> None:
    c = RcloneClient("cli", "webdav", dict(webdav_server.config), "archive", transport="cli")
    assert c.begin_upload(a_file(tmp_path, "g.flac"), f"archive/{DAY}/g.flac") is None


# -- TransfersAhead with the real pair lock ---------------------------------------------------


def _encoded(ctx: WorkerContext, job: PairJob) -> Encoded:
    """The FLAC as the encode step records it (``uploader.ledger.evidence``), at its usual path."""
    flac = ensure_flac(ctx, job, reuse=False)
    return Encoded(flac.size_bytes, flac.md5, remote_path_for(job), job.destination)


def _job(tmp_path: Path, rid: int, server: RemoteServer) -> tuple[WorkerContext, PairJob]:
    workspace, temp = tmp_path / "workspace", tmp_path / "temp"
    temp.mkdir(exist_ok=True)
    write_wav(workspace / f"mic-1/rec{rid}.wav", seconds=10.0, seed=rid)
    ctx = WorkerContext("ahead", workspace, temp)
    job = PairJob(
        recording_id=rid,
        file_raw=f"mic-1/rec{rid}.wav",
        sensor_id="mic-1",
        time=datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
        remote=RemoteSnapshot("ahead", "webdav", dict(server.config), "archive", True),
        station_name="Test Station",
        bandwidth_limit="40k",  # ≈ 10 s for this FLAC: still running when the others look
    )
    return ctx, job


def test_no_second_execution_uploads_a_pair_while_its_transfer_runs_ahead(
    engine: Engine, client: RcloneClient, webdav_server: RemoteServer, tmp_path: Path
) -> None:
    # given a transfer started ahead (a slow one: 40 KiB/s)
    ctx, job = _job(tmp_path, 7, webdav_server)
    ahead = TransfersAhead(lambda: engine)
    try:
        encoded = _encoded(ctx, job)
        assert ahead.start(ctx, job, client, "token-1", encoded)

        # then another execution of the pair (a second worker on the queue, a redelivery)
        # finds it locked, and cannot start one ahead either
        with pair_lock(engine, 7, "ahead") as mine:
            assert not mine
        other = TransfersAhead(lambda: engine)
        assert not other.start(ctx, job, client, "token-2", encoded)
        other.close()

        # when the upload step waits for it, the pair is free again
        path = remote_path_for(job)
        result = ahead.finish(7, "ahead", "token-1", path)
        assert result is not None and result.success, result
        with pair_lock(engine, 7, "ahead") as mine:
            assert mine
        flac = ensure_flac(ctx, job, checksum=False)
        assert webdav_server.uploaded(path).read_bytes() == flac.path.read_bytes()
    finally:
        ahead.close()


def test_an_idle_worker_releases_the_pair_once_its_transfer_ended(
    engine: Engine,
    client: RcloneClient,
    webdav_server: RemoteServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another worker took the upload step (and got "busy"): once the transfer ends, the pair
    must not stay locked by a worker that may have nothing more to do."""
    monkeypatch.setattr(transfer_ahead, "WATCH_S", 0.05)
    ctx, job = _job(tmp_path, 8, webdav_server)
    ahead = TransfersAhead(lambda: engine)
    try:
        unlimited = dataclasses.replace(job, bandwidth_limit="0")
        assert ahead.start(ctx, unlimited, client, "t", _encoded(ctx, unlimited))
        deadline = time.monotonic() + 30
        free = False
        while not free and time.monotonic() < deadline:
            time.sleep(0.05)
            with pair_lock(engine, 8, "ahead") as mine:
                free = mine
        assert free
    finally:
        ahead.close()
