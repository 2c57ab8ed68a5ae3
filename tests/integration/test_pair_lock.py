"""``uploader.ledger.pair_lock`` on real PostgreSQL: one holder per pair across connections, the
bounded wait of an upload step for a pair that is busy elsewhere, and ``PairLocks`` (several
pairs held on one connection, as the transfers started ahead hold them)."""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from uploader.ledger.pair_lock import PairLocks, pair_lock


def test_one_holder_per_pair(engine: Engine) -> None:
    with pair_lock(engine, 1, "a") as first:
        assert first
        with pair_lock(engine, 1, "a") as second:
            assert not second
        with pair_lock(engine, 2, "a") as other_pair, pair_lock(engine, 1, "b") as other_remote:
            assert other_pair and other_remote
    with pair_lock(engine, 1, "a") as again:
        assert again


def test_an_upload_step_waits_for_a_pair_that_is_freed_soon(engine: Engine) -> None:
    locks = PairLocks(engine)
    assert locks.acquire(5, "a")
    timer = threading.Timer(0.3, locks.release, args=(5, "a"))
    timer.start()
    try:
        with pair_lock(engine, 5, "a", wait_s=10.0) as mine:
            assert mine
    finally:
        timer.cancel()
        locks.close()


def test_the_wait_is_bounded(engine: Engine) -> None:
    locks = PairLocks(engine)
    try:
        assert locks.acquire(6, "a")
        with pair_lock(engine, 6, "a", wait_s=0.3) as mine:
            assert not mine
    finally:
        locks.close()
    with pair_lock(engine, 6, "a") as mine:  # close() released it
        assert mine


def test_pair_locks_hold_several_pairs_on_one_connection(engine: Engine) -> None:
    locks = PairLocks(engine)
    try:
        assert locks.acquire(1, "a") and locks.acquire(2, "a")
        assert locks.acquire(1, "a")  # already ours
        assert locks.held() == 2
        other = PairLocks(engine)
        assert not other.acquire(1, "a")
        locks.release(1, "a")
        assert other.acquire(1, "a") and locks.held() == 1
        other.close()
    finally:
        locks.close()
