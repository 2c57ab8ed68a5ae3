"""The upload window (``schedule_start_hour``/``schedule_end_hour``), in UTC
(docs/design/0011-runtime.md).

Both null, either null, or ``start == end`` mean no window (always on); ``start < end`` is a
same-day window ``[start, end)``; ``start > end`` wraps midnight (22→6 = 22:00–06:00).
"""

from __future__ import annotations

from datetime import UTC, datetime


def is_within_window(
    start_hour: int | None, end_hour: int | None, now: datetime | None = None
) -> bool:
    """True when uploads may run at ``now`` (default: the current UTC time)."""
    if start_hour is None or end_hour is None or start_hour == end_hour:
        return True
    hour = (now or datetime.now(UTC)).astimezone(UTC).hour
    if start_hour < end_hour:
        return start_hour <= hour < end_hour
    return hour >= start_hour or hour < end_hour
