"""``uploader.ledger.leases`` against real PostgreSQL: claiming (also from two threads at once),
expiry, stale tokens, failures and parking, and that every time is the database's."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from tests.factories import count_rows, make_recording, make_remote, make_upload
from uploader.db.models import Recording
from uploader.ledger import leases

SLUG = "nextcloud"


def _recordings(session: Session, n: int) -> list[Recording]:
    make_remote(session, SLUG)
    return [make_recording(session) for _ in range(n)]


def _expire(session: Session, recording_id: int) -> None:
    session.execute(
        text(
            "UPDATE pair_state SET lease_until = now() - interval '1 second' WHERE recording_id = :r"
        ),
        {"r": recording_id},
    )


def _failures(session: Session, recording_id: int) -> tuple[int, object, object]:
    return tuple(  # type: ignore[return-value]
        session.execute(
            text(
                "SELECT file_failures, parked_until, last_error FROM pair_state WHERE recording_id = :r"
            ),
            {"r": recording_id},
        ).one()
    )


def test_claim_leases_oldest_first_with_fresh_tokens_and_database_time(session: Session) -> None:
    recs = _recordings(session, 4)
    got = leases.claim(session, SLUG, 3, lease_s=90)
    assert [g.recording_id for g in got] == [r.id for r in recs[:3]]
    assert len({g.token for g in got}) == 3
    assert all(uuid.UUID(g.token).version == 4 for g in got)
    now = session.execute(text("SELECT now()")).scalar_one()
    assert {g.lease_until for g in got} == {now + timedelta(seconds=90)}
    assert all(leases.check(session, g.recording_id, SLUG, g.token) for g in got)
    assert leases.count_leases(session, SLUG) == 3


def test_claim_twice_gives_disjoint_sets(session: Session) -> None:
    recs = _recordings(session, 5)
    first = leases.claim(session, SLUG, 3, lease_s=60)
    second = leases.claim(session, SLUG, 3, lease_s=60)
    assert [g.recording_id for g in first] == [r.id for r in recs[:3]]
    assert [g.recording_id for g in second] == [r.id for r in recs[3:]]
    assert leases.claim(session, SLUG, 3, lease_s=60) == []


def _claim_and_commit(
    factory: sessionmaker[Session],
    both_claimed: threading.Barrier,
    results: list[list[leases.Lease]],
    errors: list[BaseException],
) -> None:
    try:
        with factory() as s:
            both_claimed.wait()
            got = leases.claim(s, SLUG, 5, lease_s=60)
            both_claimed.wait()  # neither commits before both have claimed
            s.commit()
            results.append(got)
    except BaseException as exc:  # surfaced by the test
        errors.append(exc)


def test_concurrent_claims_from_two_threads_are_disjoint(engine: Engine, session: Session) -> None:
    # given: retry work and new work, committed
    recs = _recordings(session, 12)
    for lease in leases.claim(session, SLUG, 4, lease_s=60):
        leases.release(session, lease.recording_id, SLUG, lease.token)
    session.commit()
    factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
    for _ in range(5):
        both_claimed = threading.Barrier(2, timeout=10)
        results: list[list[leases.Lease]] = []
        errors: list[BaseException] = []
        threads = [
            threading.Thread(
                target=_claim_and_commit, args=(factory, both_claimed, results, errors)
            )
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors
        ids = [g.recording_id for got in results for g in got]
        assert len(ids) == len(set(ids)), ids
        assert set(ids) <= {r.id for r in recs}
        held = session.execute(
            text("SELECT recording_id, lease_token::text FROM pair_state WHERE lease_until > now()")
        ).all()
        assert {(g.recording_id, g.token) for got in results for g in got} <= set(held)
        # put everything back for the next round
        session.execute(text("UPDATE pair_state SET lease_token = NULL, lease_until = NULL"))
        session.commit()


def test_expired_lease_is_claimed_again_and_the_old_token_goes_stale(session: Session) -> None:
    (rec,) = _recordings(session, 1)
    (old,) = leases.claim(session, SLUG, 1, lease_s=60)
    assert leases.claim(session, SLUG, 1, lease_s=60) == []
    _expire(session, rec.id)
    assert not leases.check(session, rec.id, SLUG, old.token)
    assert leases.count_leases(session, SLUG) == 0
    (new,) = leases.claim(session, SLUG, 1, lease_s=60)
    assert new.recording_id == rec.id and new.token != old.token
    assert not leases.renew(session, rec.id, SLUG, old.token, 60)
    assert leases.check(session, rec.id, SLUG, new.token)


def test_stale_token_is_rejected_by_every_step(session: Session) -> None:
    (rec,) = _recordings(session, 1)
    (lease,) = leases.claim(session, SLUG, 1, lease_s=60)
    make_upload(session, rec.id, SLUG)
    for stale in (str(uuid.uuid4()), "not-a-uuid", ""):
        assert not leases.check(session, rec.id, SLUG, stale)
        assert not leases.renew(session, rec.id, SLUG, stale, 60)
        assert not leases.release(session, rec.id, SLUG, stale)
        assert not leases.finish(session, rec.id, SLUG, stale)
        assert not leases.record_file_failure(
            session, rec.id, SLUG, stale, "x", max_file_attempts=1, park_window_hours=1
        )
    # nothing changed: the holder still holds it, with no failure counted
    assert leases.check(session, rec.id, SLUG, lease.token)
    assert _failures(session, rec.id)[0] == 0
    assert leases.finish(session, rec.id, SLUG, lease.token)
    assert count_rows(session, "pair_state") == 0


def test_renew_extends_from_database_now_even_after_expiry(session: Session) -> None:
    (rec,) = _recordings(session, 1)
    (lease,) = leases.claim(session, SLUG, 1, lease_s=5)
    assert leases.renew(session, rec.id, SLUG, lease.token, 300)
    until = session.execute(text("SELECT lease_until - now() FROM pair_state")).scalar_one()
    assert until == timedelta(seconds=300)
    _expire(session, rec.id)  # expired, but nobody claimed it since: still ours to renew
    assert leases.renew(session, rec.id, SLUG, lease.token, 60)
    assert leases.check(session, rec.id, SLUG, lease.token)


def test_release_keeps_the_failure_count_and_the_pair_is_claimable(session: Session) -> None:
    (rec,) = _recordings(session, 1)
    (lease,) = leases.claim(session, SLUG, 1, lease_s=60)
    leases.record_file_failure(
        session, rec.id, SLUG, lease.token, "bad", max_file_attempts=5, park_window_hours=1
    )
    (again,) = leases.claim(session, SLUG, 1, lease_s=60)
    assert leases.release(session, rec.id, SLUG, again.token)
    assert not leases.check(session, rec.id, SLUG, again.token)
    assert _failures(session, rec.id)[0] == 1
    (third,) = leases.claim(session, SLUG, 1, lease_s=60)
    assert third.recording_id == rec.id


def test_finish_after_success_or_deletion_but_never_for_an_undone_pair(session: Session) -> None:
    a, b, c = _recordings(session, 3)
    la, _lb, lc = leases.claim(session, SLUG, 3, lease_s=60)
    # c is neither uploaded nor deleted: its row is the only trace of it behind the cursor
    assert not leases.finish(session, c.id, SLUG, lc.token)
    assert not leases.finish(session, c.id, SLUG, None)
    assert not leases.check(session, c.id, SLUG, lc.token)  # refused: the lease was released
    assert [g.recording_id for g in leases.claim(session, SLUG, 5, lease_s=60)] == [c.id]
    make_upload(session, a.id, SLUG)
    assert leases.finish(session, a.id, SLUG, la.token)
    session.execute(text("UPDATE recordings SET local_deleted = true WHERE id = :i"), {"i": b.id})
    assert leases.finish(session, b.id, SLUG, None)
    remaining = session.execute(text("SELECT recording_id FROM pair_state")).scalars().all()
    assert remaining == [c.id]


def test_parking_at_max_attempts_and_unparking(session: Session) -> None:
    (rec,) = _recordings(session, 1)
    for attempt in (1, 2, 3):
        (lease,) = leases.claim(session, SLUG, 1, lease_s=60)
        parked = leases.record_file_failure(
            session,
            rec.id,
            SLUG,
            lease.token,
            f"corrupt WAV, try {attempt}, password=hunter2",
            max_file_attempts=3,
            park_window_hours=24,
        )
        assert parked is (attempt == 3)
    failures, parked_until, last_error = _failures(session, rec.id)
    now = session.execute(text("SELECT now()")).scalar_one()
    assert failures == 3 and parked_until == now + timedelta(hours=24)
    assert "hunter2" not in str(last_error) and "try 3" in str(last_error)
    assert leases.claim(session, SLUG, 1, lease_s=60) == []
    (listed,) = leases.list_parked(session, SLUG)
    assert (listed.recording_id, listed.file_failures, listed.file_raw) == (rec.id, 3, rec.file_raw)
    assert leases.list_parked(session, "elsewhere") == []
    # when: an operator runs `parked retry`
    assert leases.unpark(session, SLUG, [rec.id + 1000]) == 0
    assert leases.unpark(session, SLUG, [rec.id]) == 1
    # then: it is pending again with a fresh allowance of attempts
    assert leases.list_parked(session) == []
    (lease,) = leases.claim(session, SLUG, 1, lease_s=60)
    assert not leases.record_file_failure(
        session, rec.id, SLUG, lease.token, "x", max_file_attempts=3, park_window_hours=24
    )


def test_parked_pair_is_tried_once_more_after_its_window_then_parked_again(
    session: Session,
) -> None:
    (rec,) = _recordings(session, 1)
    (lease,) = leases.claim(session, SLUG, 1, lease_s=60)
    assert leases.record_file_failure(
        session, rec.id, SLUG, lease.token, "bad", max_file_attempts=1, park_window_hours=1
    )
    assert leases.claim(session, SLUG, 1, lease_s=60) == []
    # when: the window has passed
    session.execute(text("UPDATE pair_state SET parked_until = now() - interval '1 minute'"))
    (retry,) = leases.claim(session, SLUG, 1, lease_s=60)
    assert retry.recording_id == rec.id
    assert leases.list_parked(session) == []  # leased now, not parked
    # then: one more failure parks it again at once
    assert leases.record_file_failure(
        session, rec.id, SLUG, retry.token, "bad", max_file_attempts=1, park_window_hours=1
    )
    assert _failures(session, rec.id)[0] == 2
    assert leases.claim(session, SLUG, 1, lease_s=60) == []


def test_parked_pair_retried_after_its_window_can_succeed(session: Session) -> None:
    (rec,) = _recordings(session, 1)
    (lease,) = leases.claim(session, SLUG, 1, lease_s=60)
    leases.record_file_failure(
        session, rec.id, SLUG, lease.token, "bad", max_file_attempts=1, park_window_hours=1
    )
    session.execute(text("UPDATE pair_state SET parked_until = now() - interval '1 minute'"))
    (retry,) = leases.claim(session, SLUG, 1, lease_s=60)
    make_upload(session, rec.id, SLUG)
    assert leases.finish(session, rec.id, SLUG, retry.token)
    assert count_rows(session, "pair_state") == 0
    assert leases.claim(session, SLUG, 1, lease_s=60) == []


def test_release_all_drops_every_lease_of_one_remote_only(session: Session) -> None:
    _recordings(session, 3)
    make_remote(session, "s3", type="s3")
    mine = leases.claim(session, SLUG, 3, lease_s=60)
    theirs = leases.claim(session, "s3", 3, lease_s=60)
    assert leases.release_all(session, SLUG) == 3
    assert leases.count_leases(session, SLUG) == 0
    assert leases.count_leases(session, "s3") == 3
    assert not any(leases.check(session, g.recording_id, SLUG, g.token) for g in mine)
    assert all(leases.check(session, g.recording_id, "s3", g.token) for g in theirs)
    assert [g.recording_id for g in leases.claim(session, SLUG, 5, lease_s=60)] == [
        g.recording_id for g in mine
    ]


def test_claim_of_nothing_and_retry_rows_of_done_pairs(session: Session) -> None:
    (rec,) = _recordings(session, 1)
    assert leases.claim(session, SLUG, 0, lease_s=60) == []
    (lease,) = leases.claim(session, SLUG, 1, lease_s=60)
    leases.release(session, rec.id, SLUG, lease.token)
    make_upload(session, rec.id, SLUG)  # done behind our back (another process's audit)
    assert leases.claim(session, SLUG, 5, lease_s=60) == []
    assert count_rows(session, "pair_state") == 0
