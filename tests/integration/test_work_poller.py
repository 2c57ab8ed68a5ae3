"""``uploader.ledger.work_poller`` against real PostgreSQL.

The seed's *unit* table for the work poller (``test_finds_pending_for_remote`` …
``test_empty_result``) says "mocked session"; a mock would only echo the SQL back, so those
tests run here on a real database, where they can fail for the reasons that matter. The rest
cover the cursor structure (docs/pending.md): a remote added, reactivated or removed, rows that
commit behind the cursor, ``local_deleted``, a SEED-ERA database, the bounded walk and
``count_pending``.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from tests.factories import BASE_TIME, count_rows, make_recording, make_remote, make_upload
from uploader.ledger import leases, work_poller
from uploader.ledger.work_poller import count_pending, find_pending_uploads


def _ids(pending: list[work_poller.PendingUpload]) -> list[int]:
    return [p.recording_id for p in pending]


def _cursor(session: Session, slug: str) -> int | None:
    return session.execute(
        text("SELECT last_recording_id FROM remote_cursor WHERE remote_slug = :s"), {"s": slug}
    ).scalar()


def _done(session: Session, slug: str, lease_list: list[leases.Lease]) -> None:
    """What the pipeline does for each leased pair on success."""
    for lease in lease_list:
        make_upload(session, lease.recording_id, slug)
        assert leases.finish(session, lease.recording_id, slug, lease.token)


# -- the seed's unit table ------------------------------------------------------------------


def test_finds_pending_for_remote(session: Session) -> None:
    make_remote(session, "nextcloud")
    recs = [make_recording(session) for _ in range(3)]
    pending = find_pending_uploads(session, "nextcloud", 50)
    assert _ids(pending) == [r.id for r in recs]
    assert pending[0].file_raw == recs[0].file_raw
    assert pending[0].sensor_id == recs[0].sensor_id
    assert pending[0].time == recs[0].time


def test_excludes_already_uploaded_to_this_remote(session: Session) -> None:
    make_remote(session, "nextcloud")
    done, todo = make_recording(session), make_recording(session)
    make_upload(session, done.id, "nextcloud")
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [todo.id]


def test_includes_uploaded_to_other_remote(session: Session) -> None:
    make_remote(session, "nextcloud")
    make_remote(session, "s3", type="s3")
    rec = make_recording(session)
    make_upload(session, rec.id, "nextcloud")
    assert _ids(find_pending_uploads(session, "s3", 50)) == [rec.id]


def test_excludes_locally_deleted(session: Session) -> None:
    make_remote(session, "nextcloud")
    make_recording(session, local_deleted=True)
    kept = make_recording(session)
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [kept.id]


def test_batch_size_respected(session: Session) -> None:
    make_remote(session, "nextcloud")
    recs = [make_recording(session) for _ in range(5)]
    assert _ids(find_pending_uploads(session, "nextcloud", 3)) == [r.id for r in recs[:3]]
    assert find_pending_uploads(session, "nextcloud", 0) == []


def test_empty_result(session: Session) -> None:
    make_remote(session, "nextcloud")
    assert find_pending_uploads(session, "nextcloud", 50) == []
    rec = make_recording(session)
    make_upload(session, rec.id, "nextcloud")
    assert find_pending_uploads(session, "nextcloud", 50) == []


# -- order, leases, parking ---------------------------------------------------------------


def test_batch_is_sorted_by_time(session: Session) -> None:
    make_remote(session, "nextcloud")
    later = make_recording(session, time=BASE_TIME + timedelta(minutes=5))
    earlier = make_recording(session, time=BASE_TIME)
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [earlier.id, later.id]


def test_leased_and_parked_pairs_are_not_pending(session: Session) -> None:
    make_remote(session, "nextcloud")
    a, b, c = (make_recording(session) for _ in range(3))
    got = leases.claim(session, "nextcloud", 2, lease_s=60)
    assert [g.recording_id for g in got] == [a.id, b.id]
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [c.id]
    # a failed pair is retry work; parked it is not
    assert not leases.record_file_failure(
        session, a.id, "nextcloud", got[0].token, "bad", max_file_attempts=2, park_window_hours=1
    )
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [a.id, c.id]
    again = leases.claim(session, "nextcloud", 1, lease_s=60)
    assert [g.recording_id for g in again] == [a.id]
    assert leases.record_file_failure(
        session, a.id, "nextcloud", again[0].token, "bad", max_file_attempts=2, park_window_hours=1
    )
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [c.id]


def test_local_deleted_is_never_pending_even_with_a_failed_pair(session: Session) -> None:
    make_remote(session, "nextcloud")
    rec = make_recording(session)
    (lease,) = leases.claim(session, "nextcloud", 1, lease_s=60)
    leases.release(session, rec.id, "nextcloud", lease.token)
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [rec.id]
    session.execute(text("UPDATE recordings SET local_deleted = true WHERE id = :i"), {"i": rec.id})
    assert find_pending_uploads(session, "nextcloud", 50) == []
    assert leases.claim(session, "nextcloud", 5, lease_s=60) == []
    assert count_rows(session, "pair_state") == 0  # the claim dropped the stale row
    assert count_pending(session, "nextcloud") == 0


# -- the cursor ----------------------------------------------------------------------------


def test_claim_moves_the_cursor_and_find_does_not_need_it(session: Session) -> None:
    make_remote(session, "nextcloud")
    recs = [make_recording(session) for _ in range(4)]
    assert _cursor(session, "nextcloud") is None
    assert len(find_pending_uploads(session, "nextcloud", 2)) == 2
    assert _cursor(session, "nextcloud") is None  # finding never creates the row
    got = leases.claim(session, "nextcloud", 3, lease_s=60)
    assert _cursor(session, "nextcloud") == recs[2].id
    _done(session, "nextcloud", got)
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [recs[3].id]


def test_remote_added_later_sees_every_recording_and_the_old_one_is_unaffected(
    session: Session,
) -> None:
    # given: a station whose first remote has everything, some audio already deleted
    make_remote(session, "old")
    recs = [make_recording(session, local_deleted=i < 2) for i in range(6)]
    _done(session, "old", leases.claim(session, "old", 10, lease_s=60))
    assert find_pending_uploads(session, "old", 50) == []
    # when: a second remote is added
    make_remote(session, "new", type="s3")
    # then: it sees every recording still on disk; the old one still sees nothing
    expected = [r.id for r in recs[2:]]
    assert _ids(find_pending_uploads(session, "new", 50)) == expected
    assert [g.recording_id for g in leases.claim(session, "new", 50, lease_s=60)] == expected
    assert find_pending_uploads(session, "old", 50) == []
    assert leases.claim(session, "old", 50, lease_s=60) == []


def test_reactivated_remote_picks_up_what_arrived_meanwhile(session: Session) -> None:
    remote = make_remote(session, "nextcloud")
    _done(session, "nextcloud", leases.claim(session, "nextcloud", 5, lease_s=60))
    first = make_recording(session)
    _done(session, "nextcloud", leases.claim(session, "nextcloud", 5, lease_s=60))
    remote.is_active = False
    session.flush()
    meanwhile = [make_recording(session, local_deleted=i == 0) for i in range(3)]
    remote.is_active = True
    session.flush()
    got = leases.claim(session, "nextcloud", 5, lease_s=60)
    assert [g.recording_id for g in got] == [r.id for r in meanwhile[1:]]
    assert first.id not in {g.recording_id for g in got}


def test_removed_remote_takes_its_cursor_and_pairs_along(session: Session) -> None:
    make_remote(session, "gone")
    make_recording(session)
    assert len(leases.claim(session, "gone", 5, lease_s=60)) == 1
    assert count_rows(session, "remote_cursor") == 1
    session.execute(text("DELETE FROM storage_remotes WHERE slug = 'gone'"))
    assert count_rows(session, "remote_cursor") == 0
    assert count_rows(session, "pair_state") == 0
    # a claim for a remote that no longer exists finds nothing and creates nothing
    assert leases.claim(session, "gone", 5, lease_s=60) == []
    assert count_rows(session, "remote_cursor") == 0


def test_reserved_id_committed_late_behind_the_cursor_is_found(session: Session) -> None:
    # given: an id taken from the sequence (an insert in flight) and later rows committed
    make_remote(session, "nextcloud")
    make_recording(session)
    late_id = session.execute(
        text("SELECT nextval(pg_get_serial_sequence('recordings', 'id'))")
    ).scalar_one()
    after = [make_recording(session) for _ in range(3)]
    got = leases.claim(session, "nextcloud", 50, lease_s=60)
    assert len(got) == 4
    assert (_cursor(session, "nextcloud") or 0) >= after[-1].id > late_id
    # when: the in-flight row becomes visible with its lower id
    rec = make_recording(session)
    session.execute(
        text("UPDATE recordings SET id = :late WHERE id = :i"), {"late": late_id, "i": rec.id}
    )
    # then: it is found and claimed, though it sits behind the cursor
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [late_id]
    assert [g.recording_id for g in leases.claim(session, "nextcloud", 50, lease_s=60)] == [late_id]


def test_row_committed_out_of_order_by_a_concurrent_transaction_is_found(
    engine: Engine, session: Session
) -> None:
    # given: transaction A takes an id and holds it open while B commits a later row
    make_remote(session, "nextcloud")
    make_recording(session)
    session.commit()
    factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
    inserted, proceed = threading.Event(), threading.Event()
    late: list[int] = []

    def slow_insert() -> None:
        with factory() as a:
            late.append(make_recording(a).id)
            inserted.set()
            proceed.wait(10)
            a.commit()

    thread = threading.Thread(target=slow_insert)
    thread.start()
    assert inserted.wait(10)
    with factory() as b:
        later = make_recording(b)
        b.commit()
    assert later.id > late[0]
    # when: a claim runs while A is still open, then A commits
    first = leases.claim(session, "nextcloud", 50, lease_s=60)
    session.commit()
    proceed.set()
    thread.join(10)
    # then: the claim moved the cursor past A's id, and the next claim still finds A's row
    assert late[0] not in {g.recording_id for g in first}
    assert (_cursor(session, "nextcloud") or 0) >= later.id
    assert [g.recording_id for g in leases.claim(session, "nextcloud", 50, lease_s=60)] == late


def test_seed_era_success_rows_start_the_cursor_after_them(session: Session) -> None:
    # given: an older uploader left success rows for the first recordings (no cursor yet)
    make_remote(session, "nextcloud")
    recs = [make_recording(session) for _ in range(6)]
    for r in recs[:3]:
        make_upload(session, r.id, "nextcloud")
    make_upload(session, recs[4].id, "nextcloud")
    # when / then: the cursor starts below the first undecided one; done rows stay excluded
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [recs[3].id, recs[5].id]
    got = leases.claim(session, "nextcloud", 50, lease_s=60)
    assert [g.recording_id for g in got] == [recs[3].id, recs[5].id]
    assert _cursor(session, "nextcloud") == recs[5].id


def test_walk_is_bounded_and_find_moves_the_cursor_over_done_rows(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a rewound cursor with done rows past it, and a walk that examines 3 rows a call
    monkeypatch.setattr(work_poller, "SCAN_ROWS", 3)
    monkeypatch.setattr(work_poller, "LOOKBACK_IDS", 0)
    make_remote(session, "nextcloud")
    recs = [make_recording(session) for _ in range(8)]
    assert len(leases.claim(session, "nextcloud", 1, lease_s=60)) == 1  # creates the cursor
    for r in recs[:7]:
        make_upload(session, r.id, "nextcloud")
    session.execute(text("DELETE FROM pair_state"))
    session.execute(text("UPDATE remote_cursor SET last_recording_id = 0"))
    # when / then: each call examines three rows, returns nothing yet, and moves the cursor on
    assert find_pending_uploads(session, "nextcloud", 50) == []
    assert _cursor(session, "nextcloud") == recs[2].id
    assert find_pending_uploads(session, "nextcloud", 50) == []
    assert _cursor(session, "nextcloud") == recs[5].id
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [recs[7].id]
    assert _cursor(session, "nextcloud") == recs[6].id


# -- count_pending ------------------------------------------------------------------------


def test_count_pending_counts_new_and_retry_work_but_not_leased_or_parked(
    session: Session,
) -> None:
    make_remote(session, "nextcloud")
    recs = [make_recording(session) for _ in range(6)]
    make_recording(session, local_deleted=True)
    make_upload(session, recs[0].id, "nextcloud")
    assert count_pending(session, "nextcloud") == 5
    a, b, _c = leases.claim(session, "nextcloud", 3, lease_s=60)
    assert count_pending(session, "nextcloud") == 2  # three leased
    leases.release(session, a.recording_id, "nextcloud", a.token)
    assert count_pending(session, "nextcloud") == 3  # a is retry work again
    leases.record_file_failure(
        session, b.recording_id, "nextcloud", b.token, "x", max_file_attempts=1, park_window_hours=1
    )
    assert count_pending(session, "nextcloud") == 3  # b parked
    assert count_pending(session, "other") == 6  # a remote never seen: everything on disk


def test_count_pending_extrapolates_past_its_exact_window(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(work_poller, "COUNT_EXACT_CAP", 10)
    make_remote(session, "nextcloud")
    recs = [make_recording(session) for _ in range(40)]
    for r in recs[::2]:  # every other one done: half of the ids are pending
        make_upload(session, r.id, "nextcloud")
    # exactly 20 pending; the window sees 5 of its 10 and the rest is extrapolated
    assert 15 <= count_pending(session, "nextcloud") <= 25


def test_row_later_than_the_lookback_is_found_after_a_rewind(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(work_poller, "LOOKBACK_IDS", 2)
    make_remote(session, "nextcloud")
    late_id = session.execute(
        text("SELECT nextval(pg_get_serial_sequence('recordings', 'id'))")
    ).scalar_one()
    others = [make_recording(session) for _ in range(5)]
    _done(session, "nextcloud", leases.claim(session, "nextcloud", 50, lease_s=60))
    rec = make_recording(session)
    session.execute(
        text("UPDATE recordings SET id = :late WHERE id = :i"), {"late": late_id, "i": rec.id}
    )
    # more than LOOKBACK_IDS ids late: the walk does not look that far back ...
    assert find_pending_uploads(session, "nextcloud", 50) == []
    # ... until the cursor is rewound, which is always safe
    assert work_poller.rewind_cursor(session, "nextcloud", 1000) == 0
    assert _ids(find_pending_uploads(session, "nextcloud", 50)) == [late_id]
    assert [g.recording_id for g in leases.claim(session, "nextcloud", 50, lease_s=60)] == [late_id]
    assert _cursor(session, "nextcloud") == others[-1].id
