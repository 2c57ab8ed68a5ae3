"""The upload window in UTC (docs/design/0011-runtime.md): null or start == end means always; start < end is
``[start, end)``; start > end wraps midnight. The first four tests carry the seed's names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from uploader.pipeline.schedule import is_within_window


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, 26, hour, minute, tzinfo=UTC)


def test_null_schedule_always_active() -> None:
    assert all(is_within_window(None, None, at(h)) for h in range(24))


def test_within_window() -> None:
    assert is_within_window(8, 17, at(8))
    assert is_within_window(8, 17, at(12, 30))
    assert is_within_window(8, 17, at(16, 59))


def test_outside_window() -> None:
    assert not is_within_window(8, 17, at(7, 59))
    assert not is_within_window(8, 17, at(17))
    assert not is_within_window(8, 17, at(23))


def test_overnight_window() -> None:
    # start=22, end=6: 22:00-06:00 (the seed's 23/12/03 cases)
    assert is_within_window(22, 6, at(23))
    assert not is_within_window(22, 6, at(12))
    assert is_within_window(22, 6, at(3))


@pytest.mark.parametrize("hour", range(24))
def test_overnight_window_every_hour(hour: int) -> None:
    assert is_within_window(22, 6, at(hour)) is (hour >= 22 or hour < 6)


@pytest.mark.parametrize("hours", [(0, 0), (6, 6), (23, 23)])
def test_start_equal_end_is_always_on(hours: tuple[int, int]) -> None:
    # upstream's quirk made this "never"; ours: no window at all (docs/design/0011-runtime.md)
    assert all(is_within_window(*hours, at(h)) for h in range(24))


@pytest.mark.parametrize(("start", "end"), [(22, None), (None, 6)])
def test_one_sided_null_is_always_on(start: int | None, end: int | None) -> None:
    assert all(is_within_window(start, end, at(h)) for h in range(24))


def test_start_inclusive_end_exclusive() -> None:
    assert is_within_window(22, 6, at(22, 0))
    assert not is_within_window(22, 6, at(21, 59))
    assert is_within_window(22, 6, at(5, 59))
    assert not is_within_window(22, 6, at(6, 0))
    assert is_within_window(0, 1, at(0, 0)) and not is_within_window(0, 1, at(1, 0))


def test_non_utc_now_is_converted_to_utc() -> None:
    berlin_summer = timezone(timedelta(hours=2))
    # 23:30 in UTC+2 is 21:30 UTC: outside 22-6
    assert not is_within_window(22, 6, datetime(2026, 7, 1, 23, 30, tzinfo=berlin_summer))
    # 07:30 in UTC+2 is 05:30 UTC: inside 22-6
    assert is_within_window(22, 6, datetime(2026, 7, 1, 7, 30, tzinfo=berlin_summer))
    # 01:00 in UTC-5 is 06:00 UTC: the exclusive end
    assert not is_within_window(
        22, 6, datetime(2026, 7, 1, 1, 0, tzinfo=timezone(timedelta(hours=-5)))
    )


def test_default_now_is_the_current_utc_hour() -> None:
    hour = datetime.now(UTC).hour
    # a one-hour window around the current hour (read twice: tolerate a change of hour)
    inside = is_within_window(hour, (hour + 1) % 24)
    assert inside or datetime.now(UTC).hour != hour
    assert not is_within_window((hour + 1) % 24, (hour + 2) % 24) or datetime.now(UTC).hour != hour
