"""``uploader.ledger.work_poller``'s pure parts: where the cursor may move, how a batch is chosen,
the count's extrapolation, the ``PendingUpload`` model.

The seed's unit table (``test_finds_pending_for_remote``, ``test_excludes_already_uploaded_to_this_remote``,
``test_includes_uploaded_to_other_remote``, ``test_excludes_locally_deleted``,
``test_batch_size_respected``, ``test_empty_result``) runs against real PostgreSQL in
``tests/integration/test_work_poller.py``: with a mocked session it could only echo the SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest.mock import MagicMock

import pydantic
import pytest

from uploader.ledger import work_poller
from uploader.ledger.work_poller import (
    Candidate,
    PendingUpload,
    Source,
    extrapolate,
    find_pending_uploads,
    next_cursor,
    oldest,
)

T0 = datetime(2026, 3, 26, tzinfo=UTC)


def _cand(rid: int, seconds: int, source: Source = Source.new) -> Candidate:
    return Candidate(rid, T0 + timedelta(seconds=seconds), f"m/{rid}.wav", "m", source)


@pytest.mark.parametrize(
    ("walked", "taken", "scan_end", "n", "expected"),
    [
        ([], set(), None, 5, 100),  # nothing visible past the cursor
        ([], set(), 140, 5, 140),  # the walk found only decided rows, up to 140
        ([105, 107], set(), 150, 5, 104),  # finding takes nothing: stop below the first
        ([105, 107], {105}, 150, 5, 106),  # stop below the first not taken
        ([105, 107], {105, 107}, 150, 5, 150),  # all taken, walk ran out: up to its end
        ([101, 102, 103], {101, 102, 103}, None, 3, 103),  # limit reached: up to the last
        ([60, 105], {105}, 150, 5, 100),  # a late row behind the cursor holds it (never back)
        ([60, 105], {60, 105}, 150, 5, 150),
    ],
)
def test_next_cursor(
    walked: list[int], taken: set[int], scan_end: int | None, n: int, expected: int
) -> None:
    assert next_cursor(100, walked, taken, scan_end, n) == expected


def test_oldest_sorts_by_time_then_id_and_cuts_to_n() -> None:
    cands = [_cand(9, 30), _cand(3, 10, Source.retry), _cand(7, 10), _cand(5, 20)]
    assert [c.recording_id for c in oldest(cands, 3)] == [3, 7, 5]
    assert [c.recording_id for c in oldest(cands, 10)] == [3, 7, 5, 9]


def test_oldest_keeps_one_candidate_per_recording() -> None:
    cands = [_cand(4, 10, Source.retry), _cand(4, 10, Source.new), _cand(6, 20)]
    assert [(c.recording_id, c.source) for c in oldest(cands, 5)] == [
        (4, Source.retry),
        (6, Source.new),
    ]


@pytest.mark.parametrize(
    ("pending", "first_id", "last_id", "max_id", "expected"),
    [
        (10, 1, 20, 100, 40),  # half of the window's ids pending -> half of the rest
        (1000, 990_001, 991_000, 1_000_000, 9000),  # a backlog: every id past the cursor
        (1000, 300_001, 301_000, 1_000_000, 699_000),  # a new remote past deleted audio
        (0, 1, 1000, 1_000_000, 0),  # nothing pending in the window
        (5, 1, 100, 100, 0),  # the window reached the newest row: nothing to add
        (5, 100, 99, 200, 0),  # empty span: no division by zero
    ],
)
def test_extrapolate(pending: int, first_id: int, last_id: int, max_id: int, expected: int) -> None:
    assert extrapolate(pending, first_id=first_id, last_id=last_id, max_id=max_id) == expected


def test_candidate_becomes_the_seeds_pending_upload() -> None:
    pending = _cand(7, 30).to_pending()
    assert pending == PendingUpload(
        recording_id=7, file_raw="m/7.wav", sensor_id="m", time=T0 + timedelta(seconds=30)
    )


def test_pending_upload_is_frozen_and_validated() -> None:
    p = PendingUpload(recording_id=1, file_raw="m/a.wav", sensor_id="m", time=T0)
    with pytest.raises(pydantic.ValidationError):
        p.recording_id = 2  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        PendingUpload(recording_id="x", file_raw="a", sensor_id="m", time=T0)  # type: ignore[arg-type]


def test_batch_size_below_one_asks_the_database_nothing() -> None:
    session = MagicMock()
    assert find_pending_uploads(session, "nextcloud", 0) == []
    assert find_pending_uploads(session, "nextcloud", -3) == []
    session.execute.assert_not_called()


def test_bounds_are_sane() -> None:
    # the walk must be able to return a full batch past its lookback window
    assert work_poller.SCAN_ROWS > work_poller.LOOKBACK_IDS + 1000
    assert work_poller.COUNT_EXACT_CAP > 0
