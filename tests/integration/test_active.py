"""``active_remotes`` (and ``required_slugs``, which must agree with it) on real PostgreSQL: order, the ``max_uploaders`` cap, the global pause,
misconfigured remotes (invalid config, or a worker's mark that a config change clears), empty
sets and ``is_active`` NULL
(docs/design/0002-required-remotes.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.factories import make_remote, set_config
from uploader.completion.active import ActiveRemotes, SkipReason, active_remotes, required_slugs
from uploader.db.models import RemoteStatus, StorageRemote
from uploader.remotes.config import config_fingerprint
from uploader.settings import StationSettings, SystemSettings, UploaderSettings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WEBDAV_OK = {"url": "https://cloud.example.org/remote.php/webdav/", "user": "u", "pass": "p"}


def _active_remotes(session: Session, settings: StationSettings | None = None) -> ActiveRemotes:
    """``active_remotes``, checked against ``required_slugs``: the completion rule's one-statement
    read of the required set must agree with it in every case of this module."""
    active = active_remotes(session, settings)
    assert required_slugs(session, settings) == active.required_slugs
    return active


def _skips(active: ActiveRemotes) -> dict[str, SkipReason]:
    return {s.slug: s.reason for s in active.skipped}


def _remotes(session: Session, *slugs: str, **kw: Any) -> None:
    for i, slug in enumerate(slugs):
        make_remote(session, slug, created_at=T0 + timedelta(minutes=i), **kw)


def _mark(session: Session, slug: str, state: str, fingerprint: str | None) -> None:
    session.add(
        RemoteStatus(
            remote_slug=slug, state=state, detail="401 Unauthorized", config_fingerprint=fingerprint
        )
    )
    session.flush()


def test_order_is_created_at_then_slug(session: Session) -> None:
    # given: inserted out of order, two remotes created at the same instant
    make_remote(session, "late", created_at=T0 + timedelta(hours=2))
    make_remote(session, "tie-b", created_at=T0 + timedelta(hours=1))
    make_remote(session, "early", created_at=T0)
    make_remote(session, "tie-a", created_at=T0 + timedelta(hours=1))
    set_config(session, "system", {"max_uploaders": 10})
    session.commit()
    # when
    active = _active_remotes(session)
    # then
    assert active.required_slugs == ("early", "tie-a", "tie-b", "late")
    assert active.running_slugs == active.required_slugs
    assert active.skipped == ()


def test_null_created_at_sorts_last(session: Session) -> None:
    make_remote(session, "a-undated")
    session.execute(text("UPDATE storage_remotes SET created_at = NULL WHERE slug = 'a-undated'"))
    make_remote(session, "z-dated", created_at=T0)
    session.commit()
    assert _active_remotes(session).required_slugs == ("z-dated", "a-undated")


def test_cap_cuts_required_and_running(session: Session) -> None:
    _remotes(session, "first", "second", "third", "fourth")
    set_config(session, "system", {"max_uploaders": 2})
    session.commit()

    active = _active_remotes(session)

    assert active.required_slugs == ("first", "second")
    assert active.running_slugs == ("first", "second")
    assert _skips(active) == {"third": SkipReason.over_cap, "fourth": SkipReason.over_cap}
    assert all("max_uploaders is 2" in s.detail for s in active.skipped)


def test_default_cap_is_three(session: Session) -> None:
    _remotes(session, "r1", "r2", "r3", "r4")
    session.commit()
    assert _active_remotes(session).required_slugs == ("r1", "r2", "r3")


def test_cap_zero_requires_nothing(session: Session) -> None:
    _remotes(session, "r1", "r2")
    set_config(session, "system", {"max_uploaders": 0})
    session.commit()
    active = _active_remotes(session)
    assert active.required == () and active.running == ()
    assert _skips(active) == {"r1": SkipReason.over_cap, "r2": SkipReason.over_cap}


def test_pause_empties_running_but_not_required(session: Session) -> None:
    _remotes(session, "r1", "r2")
    set_config(session, "uploader", {"enabled": False})
    session.commit()

    active = _active_remotes(session)

    assert active.required_slugs == ("r1", "r2")
    assert active.running == ()
    assert _skips(active) == {"r1": SkipReason.paused, "r2": SkipReason.paused}


def test_invalid_config_is_required_not_running_and_skipped_with_reason(session: Session) -> None:
    make_remote(session, "broken", type="webdav", config={"url": "https://x/"}, created_at=T0)
    make_remote(session, "fine", type="local", created_at=T0 + timedelta(minutes=1))
    session.commit()

    active = _active_remotes(session)

    assert active.required_slugs == ("broken", "fine")
    assert active.running_slugs == ("fine",)
    (skip,) = active.skipped
    assert (skip.slug, skip.reason) == ("broken", SkipReason.misconfigured)
    assert "user: Field required" in skip.detail and "pass: Field required" in skip.detail


def test_unknown_type_is_misconfigured(session: Session) -> None:
    make_remote(session, "ftp-box", type="ftp", config={"host": "h"})
    session.commit()
    active = _active_remotes(session)
    assert active.required_slugs == ("ftp-box",)
    assert active.running == ()
    assert _skips(active) == {"ftp-box": SkipReason.misconfigured}


def test_misconfigured_remote_takes_its_slot_under_the_cap(session: Session) -> None:
    # completion is judged against the first N active remotes, working or not
    make_remote(session, "broken", type="webdav", config={}, created_at=T0)
    _remotes(session, "ok-1", "ok-2")  # created later
    session.execute(
        text("UPDATE storage_remotes SET created_at = :t WHERE slug LIKE 'ok-%'"),
        {"t": T0 + timedelta(hours=1)},
    )
    set_config(session, "system", {"max_uploaders": 2})
    session.commit()

    active = _active_remotes(session)

    assert active.required_slugs == ("broken", "ok-1")
    assert active.running_slugs == ("ok-1",)
    assert _skips(active) == {"broken": SkipReason.misconfigured, "ok-2": SkipReason.over_cap}


def test_worker_mark_with_matching_fingerprint_is_misconfigured(session: Session) -> None:
    make_remote(session, "nc", type="webdav", config=WEBDAV_OK, target_path="/a")
    _mark(session, "nc", "misconfigured", config_fingerprint("webdav", WEBDAV_OK, "/a"))
    session.commit()

    active = _active_remotes(session)

    assert active.required_slugs == ("nc",)
    assert active.running == ()
    (skip,) = active.skipped
    assert skip.reason == SkipReason.misconfigured
    assert skip.detail == "401 Unauthorized"


def test_changed_config_clears_the_worker_mark(session: Session) -> None:
    remote = make_remote(session, "nc", type="webdav", config=WEBDAV_OK, target_path="/a")
    _mark(session, "nc", "misconfigured", config_fingerprint("webdav", WEBDAV_OK, "/a"))
    session.commit()
    assert _active_remotes(session).running == ()

    # the operator fixes the password
    remote.config = {**WEBDAV_OK, "pass": "the-right-one"}
    session.commit()

    active = _active_remotes(session)
    assert active.running_slugs == ("nc",)
    assert active.skipped == ()


def test_changed_target_path_also_clears_the_mark(session: Session) -> None:
    remote = make_remote(
        session,
        "s3",
        type="s3",
        config={"access_key_id": "a", "secret_access_key": "s"},
        target_path="bucket-typo",
    )
    _mark(session, "s3", "misconfigured", config_fingerprint("s3", remote.config, "bucket-typo"))
    session.commit()
    assert _active_remotes(session).running == ()
    remote.target_path = "bucket"
    session.commit()
    assert _active_remotes(session).running_slugs == ("s3",)


def test_mark_without_fingerprint_holds(session: Session) -> None:
    make_remote(session, "nc", type="webdav", config=WEBDAV_OK)
    _mark(session, "nc", "misconfigured", None)
    session.commit()
    assert _skips(_active_remotes(session)) == {"nc": SkipReason.misconfigured}


def test_unavailable_remote_keeps_running(session: Session) -> None:
    # down is not misconfigured: its worker keeps probing (docs/design/0007-failure-kinds.md)
    make_remote(session, "nc", type="webdav", config=WEBDAV_OK)
    _mark(session, "nc", "unavailable", config_fingerprint("webdav", WEBDAV_OK, None))
    session.commit()
    active = _active_remotes(session)
    assert active.running_slugs == ("nc",)


def test_misconfigured_while_paused_is_reported_as_misconfigured(session: Session) -> None:
    make_remote(session, "broken", type="webdav", config={})
    set_config(session, "uploader", {"enabled": False})
    session.commit()
    assert _skips(_active_remotes(session)) == {"broken": SkipReason.misconfigured}


def test_no_remotes_gives_empty_sets(session: Session) -> None:
    assert _active_remotes(session) == ActiveRemotes((), (), ())


def test_inactive_remotes_are_neither_required_nor_skipped(session: Session) -> None:
    _remotes(session, "off-1", "off-2", is_active=False)
    session.commit()
    assert _active_remotes(session) == ActiveRemotes((), (), ())


def test_is_active_null_is_inactive(session: Session) -> None:
    # storage_remotes.is_active is nullable (docs/design/0012-upstream.md §1); NULL is not "true"
    _remotes(session, "on", "unknown")
    session.execute(text("UPDATE storage_remotes SET is_active = NULL WHERE slug = 'unknown'"))
    session.commit()
    assert session.get(StorageRemote, "unknown") is not None
    active = _active_remotes(session)
    assert active.required_slugs == ("on",)
    assert "unknown" not in _skips(active)


def test_inactive_remotes_do_not_take_a_slot(session: Session) -> None:
    _remotes(session, "a", "b", "c")
    session.execute(text("UPDATE storage_remotes SET is_active = false WHERE slug = 'a'"))
    set_config(session, "system", {"max_uploaders": 2})
    session.commit()
    assert _active_remotes(session).required_slugs == ("b", "c")


def test_refs_carry_what_callers_need(session: Session) -> None:
    make_remote(session, "nas", type="local", target_path="/mnt/nas", name="Garage NAS")
    session.commit()
    (ref,) = _active_remotes(session).required
    assert (ref.slug, ref.type, ref.name, ref.target_path) == (
        "nas",
        "local",
        "Garage NAS",
        "/mnt/nas",
    )


def test_settings_passed_in_are_used_instead_of_a_read(session: Session) -> None:
    _remotes(session, "r1", "r2")
    set_config(session, "system", {"max_uploaders": 2})
    session.commit()
    given = StationSettings(uploader=UploaderSettings(), system=SystemSettings(max_uploaders=1))
    assert _active_remotes(session, given).required_slugs == ("r1",)
