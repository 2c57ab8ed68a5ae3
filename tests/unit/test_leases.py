"""``uploader.ledger.leases`` branches that need no database: arguments refused before any query,
malformed tokens that must not become database errors.

Everything that touches a lease (claiming, disjoint concurrent claims, expiry, stale tokens,
parking) runs against real PostgreSQL in ``tests/integration/test_leases.py``.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from unittest.mock import MagicMock

import pytest

from uploader.ledger import leases


def test_claim_refuses_a_non_positive_lease_length() -> None:
    with pytest.raises(ValueError, match="lease_s"):
        leases.claim(MagicMock(), "nextcloud", 5, lease_s=0)


def test_claim_of_nothing_asks_the_database_nothing() -> None:
    session = MagicMock()
    assert leases.claim(session, "nextcloud", 0, lease_s=60) == []
    session.execute.assert_not_called()


@pytest.mark.parametrize("token", ["", "not-a-uuid", "1234", "../etc/passwd"])
def test_malformed_token_matches_nothing_without_a_query(token: str) -> None:
    session = MagicMock()
    assert not leases.check(session, 1, "nextcloud", token)
    assert not leases.renew(session, 1, "nextcloud", token, 60)
    assert not leases.release(session, 1, "nextcloud", token)
    assert not leases.finish(session, 1, "nextcloud", token)
    assert not leases.record_file_failure(
        session, 1, "nextcloud", token, "x", max_file_attempts=3, park_window_hours=24
    )
    session.execute.assert_not_called()


def test_lease_is_frozen() -> None:
    lease = leases.Lease(1, "nextcloud", "t", datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(dataclasses.FrozenInstanceError):
        lease.token = "other"  # type: ignore[misc]
