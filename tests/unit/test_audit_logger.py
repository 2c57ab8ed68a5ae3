"""``uploader.completion.audit_logger`` branches that need no database.

The seed's unit table (``test_success_creates_upload_and_marks_recording``,
``test_success_partial_remotes``, ``test_failure_creates_upload_only``,
``test_audit_log_immutable``) runs against real PostgreSQL in
``tests/integration/test_audit_logger.py``: the completion rule is SQL, so a mocked session
would only echo it. Here: what happens when the required set cannot be known.
"""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from uploader.completion import audit_logger
from uploader.errors import SettingsInvalid


def test_recompute_with_an_empty_required_set_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit_logger, "required_destinations", lambda _s: ())
    session = MagicMock()
    assert audit_logger.recompute_uploaded(session) == 0
    session.execute.assert_not_called()


def test_recompute_with_unreadable_settings_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_s: object) -> tuple[str, ...]:
        raise SettingsInvalid("system", "max_uploaders", "not an integer")

    monkeypatch.setattr(audit_logger, "required_destinations", broken)
    session = MagicMock()
    assert audit_logger.recompute_uploaded(session) == 0
    session.execute.assert_not_called()


def test_audit_result_is_frozen() -> None:
    result = audit_logger.AuditResult(inserted=True, recording_complete=False)
    with pytest.raises(AttributeError):
        result.inserted = False  # type: ignore[misc]
