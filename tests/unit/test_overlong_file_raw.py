"""An over-long ``file_raw`` is the recording's problem (parked), not an unknown error that
loops: on Python 3.11 ``Path.is_file`` raises ENAMETOOLONG instead of returning False."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from uploader.errors import UnsafePath
from uploader.pipeline.steps import PairJob, RemoteSnapshot, WorkerContext, ensure_flac

pytestmark = pytest.mark.unit


def test_an_over_long_file_raw_is_refused_as_the_files_fault(tmp_path: Path) -> None:
    ctx = WorkerContext("usb", tmp_path / "workspace", tmp_path / "temp")
    (tmp_path / "workspace" / "mic").mkdir(parents=True)  # the folder exists, the name is too long
    job = PairJob(
        recording_id=7,
        file_raw="mic/" + "x" * 300 + ".wav",
        sensor_id="mic",
        time=datetime(2026, 12, 5, tzinfo=UTC),
        remote=RemoteSnapshot("usb", "local", {}, "/mnt/usb", True),
        station_name="S",
        bandwidth_limit="off",
    )
    with pytest.raises(UnsafePath) as info:
        ensure_flac(ctx, job)
    assert "cannot be looked up" in str(info.value) and info.value.recording_id == 7
