"""One bandwidth grammar: ``uploader.bandwidth_limit`` accepts exactly what the pinned rclone's
``--bwlimit`` accepts, value by value, asked of the real binary; and the setting is refused
when it is read, so a bad value never reaches a remote."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tests.factories import set_config
from uploader.errors import SettingsInvalid
from uploader.rclone.client import find_rclone_binary
from uploader.rclone.limits import parse_bwlimit
from uploader.settings import load_station_settings

pytestmark = pytest.mark.integration

VALUES = [
    # rates
    "1M", "500k", "512", "1.5M", "1.5MiB", "1Mi", "1KiB", "1b", "100B", "10G", "1P", "1E", "1e",
    "0", "0k", "off", "OFF", ".5M", "5.M", "1e3", "1e+3k", "+1M", "1.5e2M", "1" * 309,
    # up:down
    "1M:off", "off:1M", "1M:500k",
    # timetables
    "08:00,512k 19:00,off", "Mon-08:00,1M Sat-00:00,off", "monday-08:00,1M", "MON-08:00,1M",
    "Sunday-23:59,off", "08:00,1M:500k 12:00,off", "Mon-08:00,1M 08:00,off",
    # refused by both
    "fast", "1M; rm -rf /", "--config=/etc/passwd", "1mb", "1kB", "-1", "1ZB", "1M 2M",
    "1 M", " 1M ", "25:00,1M", "8:00,1M", "08:0,1M", "Mo-08:00,1M", "Mondays-08:00,1M",
    "08:00,fast", "1k:", "::", "1,000", "0x10", "1M:1M:1M", "1M 08:00,off",
]  # fmt: skip


def _rclone_accepts(value: str, tmp_path: Path) -> bool:
    done = subprocess.run(
        [find_rclone_binary(), "--bwlimit", value, "--config", "/notfound", "lsf", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        assert "--bwlimit" in done.stderr, done.stderr  # refused for the flag, not else
    return done.returncode == 0


def _we_accept(value: str) -> bool:
    try:
        parse_bwlimit(value)
    except SettingsInvalid:
        return False
    return True


@pytest.mark.parametrize("value", VALUES, ids=[v[:24] for v in VALUES])
def test_we_accept_exactly_what_rclone_accepts(value: str, tmp_path: Path) -> None:
    assert _we_accept(value) == _rclone_accepts(value, tmp_path)


def test_the_empty_value_means_no_limit_and_is_never_passed_to_rclone() -> None:
    # the one documented extension: "" (like null) is "no limit", no --bwlimit flag at all
    assert parse_bwlimit("").arg is None


@pytest.mark.parametrize("value", ["fast", "1M; rm -rf /", "--config=/etc/passwd", "1" * 400])
def test_a_bad_value_is_refused_when_the_settings_are_read(session: Session, value: str) -> None:
    set_config(session, "uploader", {"bandwidth_limit": value})
    with pytest.raises(SettingsInvalid) as info:
        load_station_settings(session)
    assert info.value.key == "uploader" and info.value.field == "bandwidth_limit"
    assert value not in str(info.value)  # never echoed back
