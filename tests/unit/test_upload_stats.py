"""UploadStats: the seed's two-phase logging, driven by a fake clock, asserted on the
structlog events (names and fields are a contract operators grep for)."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from tests.unit.fake_clock import Clock
from uploader.ops.upload_stats import UploadCounts, UploadStats


def make_stats(clock: Clock, startup_s: float = 300, interval_s: float = 300) -> UploadStats:
    return UploadStats(startup_s=startup_s, summary_interval_s=interval_s, clock=clock)


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


def past_startup(clock: Clock) -> UploadStats:
    """A UploadStats already in steady state (its phase change logged and discarded)."""
    stats = make_stats(clock)
    clock.advance(301)
    with capture_logs():
        stats.maybe_emit_summary()
    return stats


# ---- the seed's table -------------------------------------------------------------------


def test_startup_phase_logs_individually(clock: Clock) -> None:
    stats = make_stats(clock)
    clock.advance(10)
    with capture_logs() as logs:
        stats.record_upload("nextcloud", "raw_20260329_143000.flac", 3_200_000, 4.5)
    assert logs == [
        {
            "event": "upload.completed",
            "log_level": "info",
            "remote": "nextcloud",
            "file": "raw_20260329_143000.flac",
            "size_bytes": 3_200_000,
            "duration_s": 4.5,
        }
    ]


def test_steady_state_accumulates(clock: Clock) -> None:
    stats = past_startup(clock)
    with capture_logs() as logs:
        stats.record_upload("nextcloud", "a.flac", 100, 0.1)
        stats.record_upload("nextcloud", "b.flac", 200, 0.1)
    assert events(logs, "upload.completed") == []
    assert stats.interval_counts == UploadCounts(uploaded=2, bytes=300)


def test_summary_emitted_after_interval(clock: Clock) -> None:
    stats = past_startup(clock)
    for i in range(42):
        stats.record_upload("nextcloud", f"{i}.flac", 134_000_000 // 42, 1.0)
    stats.record_error("nextcloud", "x.flac", "connection refused")
    stats.record_connection_abort("nextcloud")
    stats.record_skipped_missing("gone.wav")
    clock.advance(299)
    with capture_logs() as logs:
        assert stats.maybe_emit_summary() is False
    assert logs == []
    clock.advance(1)
    with capture_logs() as logs:
        assert stats.maybe_emit_summary() is True
    (summary,) = events(logs, "upload.summary")
    assert summary == {
        "event": "upload.summary",
        "log_level": "info",
        "interval_uploaded": 42,
        "interval_failed": 1,
        "interval_bytes": 42 * (134_000_000 // 42),
        "rate_mb_h": 1608.0,  # the seed's example: 134 MB in 5 minutes
        "total_uploaded": 42,
        "total_failed": 1,
        "total_bytes": 42 * (134_000_000 // 42),
        "uptime_s": 601.0,
        "interval_s": 300.0,
        "interval_connection_aborts": 1,
        "interval_skipped_missing": 1,
    }


def test_summary_resets_interval_counters(clock: Clock) -> None:
    stats = past_startup(clock)
    stats.record_upload("r", "a.flac", 1000, 1.0)
    stats.record_error("r", "b.flac", "nope")
    clock.advance(300)
    with capture_logs():
        stats.maybe_emit_summary()
    assert stats.interval_counts == UploadCounts()
    assert stats.total_counts == UploadCounts(uploaded=1, failed=1, bytes=1000)
    stats.record_upload("r", "c.flac", 500, 1.0)
    clock.advance(300)
    with capture_logs() as logs:
        stats.maybe_emit_summary()
    (summary,) = events(logs, "upload.summary")
    assert (summary["interval_uploaded"], summary["interval_failed"]) == (1, 0)
    assert summary["interval_bytes"] == 500
    assert (summary["total_uploaded"], summary["total_failed"]) == (2, 1)


def test_final_summary_on_shutdown(clock: Clock) -> None:
    stats = make_stats(clock)
    with capture_logs() as stats_logs:
        stats.record_upload("r", "a.flac", 3_000_000, 1.0)
        clock.advance(400)
        stats.record_upload("r", "b.flac", 1_000_000, 1.0)
        stats.record_error("r", "c.flac", "refused")
        stats.record_connection_abort("r")
        stats.record_skipped_missing("d.wav")
        clock.advance(3200)
        assert stats.emit_final_summary() is True
        assert stats.emit_final_summary() is False  # shutdown hooks may fire twice
    (final,) = events(stats_logs, "upload.final_summary")
    assert final == {
        "event": "upload.final_summary",
        "log_level": "info",
        "total_uploaded": 2,
        "total_failed": 1,
        "total_bytes": 4_000_000,
        "total_connection_aborts": 1,
        "total_skipped_missing": 1,
        "rate_mb_h": 4.0,
        "uptime_s": 3600.0,
    }


def test_phase_transition_logged_once(clock: Clock) -> None:
    stats = make_stats(clock)
    with capture_logs() as logs:
        stats.record_upload("r", "a.flac", 10, 0.1)
        clock.advance(300)  # exactly at the end of the startup phase
        stats.record_upload("r", "b.flac", 20, 0.1)
        stats.maybe_emit_summary()
        clock.advance(1000)
        stats.record_upload("r", "c.flac", 30, 0.1)
        stats.maybe_emit_summary()
        stats.maybe_emit_summary()
    (complete,) = events(logs, "upload.startup_phase_complete")
    assert complete["uploaded"] == 1 and complete["bytes"] == 10  # what the startup phase saw
    assert complete["startup_s"] == 300 and complete["summary_interval_s"] == 300
    names = [e["event"] for e in logs]
    assert names.index("upload.startup_phase_complete") == 1  # before b.flac is counted
    assert [e["file"] for e in events(logs, "upload.completed")] == ["a.flac"]


def test_record_error_always_logged(clock: Clock) -> None:
    stats = make_stats(clock)
    with capture_logs() as logs:
        stats.record_error("nextcloud", "a.flac", "connection refused")
        clock.advance(10_000)
        stats.record_error("nextcloud", "b.flac", RuntimeError("rclone said 403"))
    failed = events(logs, "upload.failed")
    assert failed[0] == {
        "event": "upload.failed",
        "log_level": "warning",
        "remote": "nextcloud",
        "file": "a.flac",
        "error": "connection refused",
    }
    assert failed[1]["file"] == "b.flac"
    assert failed[1]["error"] == "rclone said 403"
    assert failed[1]["error_kind"] == "RuntimeError"
    assert stats.total_counts.failed == 2


def test_connection_abort_counted(clock: Clock) -> None:
    stats = past_startup(clock)
    with capture_logs() as logs:
        stats.record_connection_abort("s3")
        stats.record_connection_abort("s3")
    assert logs == []  # steady state: only the summary tells
    assert stats.interval_counts.connection_aborts == 2
    clock.advance(300)
    with capture_logs() as logs:
        stats.maybe_emit_summary()
    assert events(logs, "upload.summary")[0]["interval_connection_aborts"] == 2


def test_skipped_missing_counted(clock: Clock) -> None:
    stats = past_startup(clock)
    stats.record_skipped_missing("gone.wav")
    assert stats.interval_counts.skipped_missing == 1
    clock.advance(300)
    with capture_logs() as logs:
        stats.maybe_emit_summary()
    assert events(logs, "upload.summary")[0]["interval_skipped_missing"] == 1


# ---- beyond the seed ---------------------------------------------------------------------


def test_startup_phase_logs_aborts_and_missing_individually(clock: Clock) -> None:
    stats = make_stats(clock)
    with capture_logs() as logs:
        stats.record_connection_abort("s3")
        stats.record_skipped_missing("gone.wav")
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("upload.connection_aborted", "warning"),
        ("upload.skipped_missing", "info"),
    ]
    assert logs[0]["remote"] == "s3" and logs[1]["file"] == "gone.wav"


def test_no_summary_during_startup(clock: Clock) -> None:
    stats = make_stats(clock, startup_s=600, interval_s=60)
    clock.advance(500)
    with capture_logs() as logs:
        assert stats.maybe_emit_summary() is False
    assert logs == []
    assert stats.in_startup_phase


def test_first_interval_starts_when_startup_ends(clock: Clock) -> None:
    stats = make_stats(clock, startup_s=300, interval_s=300)
    clock.advance(301)
    assert not stats.in_startup_phase  # the phase change starts the first interval
    clock.advance(299)
    with capture_logs():
        assert stats.maybe_emit_summary() is False
    clock.advance(1)
    with capture_logs():
        assert stats.maybe_emit_summary() is True


def test_error_messages_are_redacted(clock: Clock) -> None:
    stats = make_stats(clock)
    with capture_logs() as logs:
        stats.record_error("dav", "a.flac", "PUT https://bob:s3cr3t@dav.example/x failed")
    assert "s3cr3t" not in logs[0]["error"]


def test_environment_sets_the_phases(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    monkeypatch.setenv("SILVASONIC_UPLOADER_LOG_STARTUP_S", "0")
    monkeypatch.setenv("SILVASONIC_UPLOADER_LOG_SUMMARY_INTERVAL_S", "60")
    stats = UploadStats(clock=clock)
    with capture_logs() as logs:
        stats.record_upload("r", "a.flac", 1, 0.1)
        clock.advance(60)
        stats.maybe_emit_summary()
    assert [e["event"] for e in logs] == ["upload.startup_phase_complete", "upload.summary"]


def test_defaults_are_five_minutes(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    monkeypatch.delenv("SILVASONIC_UPLOADER_LOG_STARTUP_S", raising=False)
    monkeypatch.delenv("SILVASONIC_UPLOADER_LOG_SUMMARY_INTERVAL_S", raising=False)
    stats = UploadStats(clock=clock)
    clock.advance(299.9)
    assert stats.in_startup_phase
    clock.advance(0.1)
    with capture_logs():
        assert not stats.in_startup_phase
    clock.advance(299.9)
    assert not stats.maybe_emit_summary()


@pytest.mark.parametrize("value", ["five", "nan", "inf", "-1"])
def test_bad_environment_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SILVASONIC_UPLOADER_LOG_STARTUP_S", value)
    with pytest.raises(ValueError, match=r"SILVASONIC_UPLOADER_LOG_STARTUP_S|≥ 0"):
        UploadStats()


def test_zero_interval_refused() -> None:
    with pytest.raises(ValueError, match="summary_interval_s"):
        UploadStats(summary_interval_s=0)


def test_injected_logger_is_used(clock: Clock) -> None:
    with capture_logs() as logs:
        logger = structlog.get_logger("custom").bind(remote_instance="uploader-s3")
        stats = UploadStats(startup_s=300, summary_interval_s=300, clock=clock, logger=logger)
        stats.record_upload("s3", "a.flac", 1, 0.1)
    assert logs[0]["remote_instance"] == "uploader-s3"
