"""The pure parts of ``uploader.completion.active``; the set computation itself runs against real
PostgreSQL in tests/integration/test_active.py."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy.orm import Session

from uploader.completion.active import (
    ActiveRemotes,
    RemoteRef,
    Skipped,
    SkipReason,
    misconfiguration,
)
from uploader.db.models import StorageRemote


class _NoQueries:
    """A session that fails the test if it is asked anything."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"session.{name} used")


def test_skip_reasons_are_stable_strings() -> None:
    # status, the heartbeat and the controller report these words
    assert {r.value for r in SkipReason} == {"misconfigured", "over_max_uploaders", "paused"}
    assert SkipReason.paused == "paused"


def test_slug_views_keep_order() -> None:
    a = RemoteRef("a", "local", "A", None)
    b = RemoteRef("b", "s3", "B", "bucket")
    active = ActiveRemotes(
        required=(b, a), running=(a,), skipped=(Skipped("b", SkipReason.paused),)
    )
    assert active.required_slugs == ("b", "a")
    assert active.running_slugs == ("a",)


def test_invalid_config_is_reported_without_asking_the_database() -> None:
    remote = StorageRemote(slug="nc", type="webdav", name="NC", config={"url": "https://x/"})
    reason = misconfiguration(cast(Session, _NoQueries()), remote)
    assert reason is not None and "user: Field required" in reason


def test_unknown_type_is_reported_without_asking_the_database() -> None:
    remote = StorageRemote(slug="nc", type="ftp", name="NC", config={})
    reason = misconfiguration(cast(Session, _NoQueries()), remote)
    assert reason is not None and "'ftp' is not supported" in reason


def test_missing_config_counts_as_empty() -> None:
    # config is NOT NULL in SQL, but an ORM object built in memory may not have it yet
    remote = StorageRemote(slug="s3", type="s3", name="S3", config=None)
    reason = misconfiguration(cast(Session, _NoQueries()), remote)
    assert reason is not None and "access_key_id: Field required" in reason
