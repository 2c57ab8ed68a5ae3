"""Two-phase upload logging, the pattern of upstream's ``RecordingStats``: while a worker starts,
when someone is watching, every upload is its own line; after that the worker says
``upload.summary`` once per interval, so a station that uploads every few seconds does not flood
its log. Failures are always logged one by one.

Events: ``upload.completed``, ``upload.failed``, ``upload.connection_aborted``,
``upload.skipped_missing``, ``upload.startup_phase_complete`` (once), ``upload.summary``,
``upload.final_summary``. These counters feed log lines only; what the heartbeat reports lives
in Redis or the database (docs/design/0011-runtime.md), because prefork parent and child both
need it.
Single-threaded by design (one task at a time per worker process), so no lock.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from structlog.typing import FilteringBoundLogger

from uploader.redact import redact

STARTUP_ENV = "SILVASONIC_UPLOADER_LOG_STARTUP_S"
SUMMARY_INTERVAL_ENV = "SILVASONIC_UPLOADER_LOG_SUMMARY_INTERVAL_S"
#: seconds of individual lines after start (the seed's 5 minutes)
DEFAULT_STARTUP_S = 300.0
#: seconds between two ``upload.summary`` lines (the seed's 5 minutes)
DEFAULT_SUMMARY_INTERVAL_S = 300.0


@dataclass(frozen=True)
class UploadCounts:
    """Counts over one interval or the worker's lifetime."""

    uploaded: int = 0
    failed: int = 0
    bytes: int = 0
    connection_aborts: int = 0
    skipped_missing: int = 0

    def add(self, **deltas: int) -> UploadCounts:
        return dataclasses.replace(self, **{k: getattr(self, k) + v for k, v in deltas.items()})


class UploadStats:
    """Counters and the two logging phases of one worker process.

    ``clock`` returns monotonic seconds (injectable so tests need not sleep); ``logger`` is a
    structlog logger. ``startup_s`` and ``summary_interval_s`` default to the environment
    (``SILVASONIC_UPLOADER_LOG_STARTUP_S``, ``…_SUMMARY_INTERVAL_S``), then 300 s each;
    a value that is not a number of seconds raises ValueError at construction, so a typo is
    refused when the worker starts rather than ignored.
    """

    def __init__(
        self,
        *,
        startup_s: float | None = None,
        summary_interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._startup_s = (
            startup_s if startup_s is not None else _env_seconds(STARTUP_ENV, DEFAULT_STARTUP_S)
        )
        self._interval_s = (
            summary_interval_s
            if summary_interval_s is not None
            else _env_seconds(SUMMARY_INTERVAL_ENV, DEFAULT_SUMMARY_INTERVAL_S)
        )
        if self._startup_s < 0:
            raise ValueError(f"startup_s must be ≥ 0, not {self._startup_s}")
        if self._interval_s <= 0:
            raise ValueError(f"summary_interval_s must be > 0, not {self._interval_s}")
        self._clock = clock
        self._log: FilteringBoundLogger = logger or structlog.get_logger(
            "uploader.ops.upload_stats"
        )
        self._started = clock()
        self._interval_started = self._started
        self._startup_over = False
        self._final_emitted = False
        self._interval = UploadCounts()
        self._total = UploadCounts()

    @property
    def interval_counts(self) -> UploadCounts:
        """Counts since the last summary (or since start, during the startup phase)."""
        return self._interval

    @property
    def total_counts(self) -> UploadCounts:
        return self._total

    @property
    def in_startup_phase(self) -> bool:
        return self._check_phase()

    def record_upload(
        self, remote_slug: str, filename: str, size_bytes: int, duration_s: float
    ) -> None:
        """One successful upload; logged on its own line only during the startup phase."""
        individual = self._check_phase()
        self._count(uploaded=1, bytes=size_bytes)
        if individual:
            self._log.info(
                "upload.completed",
                remote=remote_slug,
                file=filename,
                size_bytes=size_bytes,
                duration_s=round(duration_s, 3),
            )

    def record_error(self, remote_slug: str, filename: str, error: str | BaseException) -> None:
        """One failed upload: always logged, its message redacted (it may quote rclone)."""
        self._check_phase()
        self._count(failed=1)
        fields: dict[str, str] = {"error": redact(str(error))}
        if isinstance(error, BaseException):
            fields["error_kind"] = type(error).__name__
        self._log.warning("upload.failed", remote=remote_slug, file=filename, **fields)

    def record_connection_abort(self, remote_slug: str) -> None:
        """The remote stopped answering and the rest of the work was put off; in the summary
        afterwards (during an outage the remote's state, not the log, is the alarm)."""
        individual = self._check_phase()
        self._count(connection_aborts=1)
        if individual:
            self._log.warning("upload.connection_aborted", remote=remote_slug)

    def record_skipped_missing(self, filename: str) -> None:
        """A WAV already deleted locally (the Janitor was faster): nothing to upload."""
        individual = self._check_phase()
        self._count(skipped_missing=1)
        if individual:
            self._log.info("upload.skipped_missing", file=filename)

    def maybe_emit_summary(self) -> bool:
        """Log ``upload.summary`` if the interval has passed (never in the startup phase) and
        start a new interval; returns whether it did. Call it after every task or cycle."""
        if self._check_phase():
            return False
        now = self._clock()
        elapsed = now - self._interval_started
        if elapsed < self._interval_s:
            return False
        i, t = self._interval, self._total
        self._log.info(
            "upload.summary",
            interval_uploaded=i.uploaded,
            interval_failed=i.failed,
            interval_bytes=i.bytes,
            rate_mb_h=_rate_mb_h(i.bytes, elapsed),
            total_uploaded=t.uploaded,
            total_failed=t.failed,
            total_bytes=t.bytes,
            uptime_s=round(now - self._started, 1),
            interval_s=round(elapsed, 1),
            interval_connection_aborts=i.connection_aborts,
            interval_skipped_missing=i.skipped_missing,
        )
        self._interval = UploadCounts()
        self._interval_started = now
        return True

    def emit_final_summary(self) -> bool:
        """Log ``upload.final_summary`` with the lifetime totals, once (shutdown hooks may
        fire twice); returns whether it did."""
        if self._final_emitted:
            return False
        self._final_emitted = True
        uptime = self._clock() - self._started
        t = self._total
        self._log.info(
            "upload.final_summary",
            total_uploaded=t.uploaded,
            total_failed=t.failed,
            total_bytes=t.bytes,
            total_connection_aborts=t.connection_aborts,
            total_skipped_missing=t.skipped_missing,
            rate_mb_h=_rate_mb_h(t.bytes, uptime),
            uptime_s=round(uptime, 1),
        )
        return True

    def _check_phase(self) -> bool:
        """True while in the startup phase; on leaving it, say so once and start the first
        summary interval (startup events were already logged one by one)."""
        if self._startup_over:
            return False
        now = self._clock()
        if now - self._started < self._startup_s:
            return True
        self._startup_over = True
        i = self._interval
        self._log.info(
            "upload.startup_phase_complete",
            startup_s=self._startup_s,
            summary_interval_s=self._interval_s,
            uploaded=i.uploaded,
            failed=i.failed,
            bytes=i.bytes,
            connection_aborts=i.connection_aborts,
            skipped_missing=i.skipped_missing,
        )
        self._interval = UploadCounts()
        self._interval_started = now
        return False

    def _count(self, **deltas: int) -> None:
        self._interval = self._interval.add(**deltas)
        self._total = self._total.add(**deltas)


def _rate_mb_h(size_bytes: int, seconds: float) -> float:
    """MB (10⁶ bytes) per hour: 134,000,000 bytes in 300 s → 1608.0."""
    return round(size_bytes / 1e6 / (seconds / 3600), 1) if seconds > 0 else 0.0


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{name}={raw!r} is not a number of seconds")
    return value
