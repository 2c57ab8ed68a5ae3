"""The rcd daemon of an idle worker is stopped after SILVASONIC_RCLONE_RCD_IDLE_S and started
again by the next upload (issue 7: a worker at rest holds no daemon), never under an upload."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.stack import wait_until
from uploader.rclone.client import RCD_IDLE_ENV, RcloneClient


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[RcloneClient]:
    (tmp_path / "archive").mkdir()
    c = RcloneClient("idle-test", "local", {}, str(tmp_path / "archive"), transport="rcd")
    yield c
    c.close()


def test_idle_daemon_is_stopped_and_restarted_by_the_next_upload(
    client: RcloneClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RCD_IDLE_ENV, "0.5")
    src = tmp_path / "a.flac"
    src.write_bytes(os.urandom(50_000))
    assert client.upload_file(src, str(tmp_path / "archive" / "1.flac")).success
    assert client.daemon is not None and client.daemon.pid is not None
    first = client.daemon.pid
    assert _alive(first)
    assert wait_until(lambda: not _alive(first), 10, 0.1)
    assert client.upload_file(src, str(tmp_path / "archive" / "2.flac")).success
    assert client.daemon is not None and client.daemon.pid not in (None, first)
    assert (tmp_path / "archive" / "2.flac").read_bytes() == src.read_bytes()


def test_uploads_in_a_row_keep_one_daemon(
    client: RcloneClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RCD_IDLE_ENV, "0.5")
    src = tmp_path / "a.flac"
    src.write_bytes(os.urandom(10_000))
    pids = set()
    for i in range(10):  # each upload re-arms the idle stop: well under 0.5 s apart
        assert client.upload_file(src, str(tmp_path / "archive" / f"{i}.flac")).success
        assert client.daemon is not None
        pids.add(client.daemon.pid)
    assert len(pids) == 1


def test_zero_keeps_the_daemon(
    client: RcloneClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RCD_IDLE_ENV, "0")
    src = tmp_path / "a.flac"
    src.write_bytes(os.urandom(10_000))
    assert client.upload_file(src, str(tmp_path / "archive" / "1.flac")).success
    assert client.daemon is not None and client.daemon.pid is not None
    time.sleep(1.0)
    assert _alive(client.daemon.pid)


def test_a_transfer_running_ahead_keeps_its_daemon_past_the_idle_time(
    client: RcloneClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow transfer started ahead (nobody waits for it yet) is not cut by the idle stop."""
    monkeypatch.setenv(RCD_IDLE_ENV, "0.5")
    src = tmp_path / "slow.flac"
    src.write_bytes(os.urandom(100 * 1024))  # ≈ 2.5 s at 40 KiB/s
    pending = client.begin_upload(src, str(tmp_path / "archive" / "slow.flac"), "40k")
    assert pending is not None
    time.sleep(2.0)  # four idle times while nobody waits for it (no lock held)
    assert client.upload_running(pending)
    result = client.finish_upload(pending)
    assert result is not None and result.success, result
    assert (tmp_path / "archive" / "slow.flac").read_bytes() == src.read_bytes()
    # and once idle, it is stopped after all
    pid = client.daemon.pid if client.daemon is not None else None
    assert pid is not None and wait_until(lambda: not _alive(pid), 10, 0.1)
