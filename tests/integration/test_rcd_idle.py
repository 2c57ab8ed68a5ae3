"""The rcd daemon of an idle worker is stopped after SILVASONIC_RCLONE_RCD_IDLE_S and started
again by the next upload (issue 7: a worker at rest holds no daemon), never under an upload."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.stack import wait_until
from uploader.rclone_client import RCD_IDLE_ENV, RcloneClient


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
    import time

    monkeypatch.setenv(RCD_IDLE_ENV, "0")
    src = tmp_path / "a.flac"
    src.write_bytes(os.urandom(10_000))
    assert client.upload_file(src, str(tmp_path / "archive" / "1.flac")).success
    assert client.daemon is not None and client.daemon.pid is not None
    time.sleep(1.0)
    assert _alive(client.daemon.pid)
