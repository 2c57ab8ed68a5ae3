"""Repeated failure lines are bounded to one per (event, remote) per period, with a count."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.fake_clock import Clock
from uploader.log_limiter import RepeatLimiter

pytestmark = pytest.mark.unit


def test_the_first_line_goes_out_then_one_per_period_with_the_count() -> None:
    clock = Clock()
    limiter = RepeatLimiter(60, clock)
    assert limiter.admit("rclone.upload_failed", "dav") == 0
    held = [limiter.admit("rclone.upload_failed", "dav") for _ in range(11)]
    assert held == [None] * 11
    clock.advance(59.9)
    assert limiter.admit("rclone.upload_failed", "dav") is None
    clock.advance(0.2)
    assert limiter.admit("rclone.upload_failed", "dav") == 12


def test_events_and_remotes_are_counted_apart_and_a_reset_makes_news_again() -> None:
    clock = Clock()
    limiter = RepeatLimiter(60, clock)
    assert limiter.admit("upload.failed", "dav") == 0
    assert limiter.admit("upload.failed", "usb") == 0
    assert limiter.admit("rclone.upload_failed", "dav") == 0
    assert limiter.admit("upload.failed", "dav") is None
    limiter.reset("dav")
    assert limiter.admit("upload.failed", "dav") == 0
    assert limiter.admit("upload.failed", "usb") is None


def test_log_limited_adds_repeated_only_when_lines_were_held(monkeypatch: Any) -> None:
    from uploader import log_limiter

    clock = Clock()
    monkeypatch.setattr(log_limiter, "_LIMITER", RepeatLimiter(60, clock))
    lines: list[tuple[str, dict[str, Any]]] = []

    def emit(event: str, **fields: Any) -> None:
        lines.append((event, fields))

    for _ in range(5):
        log_limiter.log_limited(emit, "upload.failed", "dav", reason="401")
    clock.advance(61)
    log_limiter.log_limited(emit, "upload.failed", "dav", reason="401")
    assert lines == [
        ("upload.failed", {"reason": "401"}),
        ("upload.failed", {"reason": "401", "repeated": 4}),
    ]
