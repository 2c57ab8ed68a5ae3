"""``uploader.remotes.state`` against real PostgreSQL, and its agreement with
``uploader.completion.active`` (which reads the misconfigured mark)."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from tests.factories import make_remote
from uploader.completion.active import SkipReason, active_remotes
from uploader.remotes import state as remote_state
from uploader.remotes.config import config_fingerprint
from uploader.remotes.state import State, get_state, mark_misconfigured, mark_ok, mark_unavailable


def _now(session: Session) -> object:
    return session.execute(text("SELECT now()")).scalar_one()


def test_no_row_means_ok(session: Session) -> None:
    make_remote(session, "nextcloud")
    assert get_state(session, "nextcloud") == remote_state.RemoteState(State.ok, None, None)
    assert not mark_ok(session, "nextcloud")


def test_unavailable_then_recovered_keeps_since_while_down(session: Session) -> None:
    make_remote(session, "nextcloud")
    assert mark_unavailable(session, "nextcloud", "dial tcp: connection refused")
    first = get_state(session, "nextcloud")
    assert first.state is State.unavailable and first.since == _now(session)
    session.commit()
    assert not mark_unavailable(session, "nextcloud", "i/o timeout")
    again = get_state(session, "nextcloud")
    assert again.since == first.since and again.detail == "i/o timeout"
    assert mark_ok(session, "nextcloud")
    assert get_state(session, "nextcloud").state is State.ok
    assert not mark_ok(session, "nextcloud")


def test_details_are_redacted(session: Session) -> None:
    make_remote(session, "nextcloud")
    mark_unavailable(session, "nextcloud", "GET https://bob:pw123456@dav.example/ failed")
    detail = get_state(session, "nextcloud").detail or ""
    assert "pw123456" not in detail and "dav.example" in detail


def test_misconfigured_is_seen_by_active_remotes_until_the_config_changes(
    session: Session,
) -> None:
    remote = make_remote(session, "usb")
    fingerprint = config_fingerprint(remote.type, remote.config, remote.target_path)
    assert mark_misconfigured(session, "usb", "token=abc123 rejected: 401", fingerprint)
    assert not mark_misconfigured(session, "usb", "again", fingerprint)
    state = get_state(session, "usb")
    assert state.state is State.misconfigured and "abc123" not in (state.detail or "")
    active = active_remotes(session)
    assert active.required_slugs == ("usb",) and active.running_slugs == ()
    assert [s.reason for s in active.skipped] == [SkipReason.misconfigured]
    # a connection error does not hide the operator's problem ...
    assert not mark_unavailable(session, "usb", "timeout")
    assert get_state(session, "usb").state is State.misconfigured
    # ... until the config changes: then the old mark is stale and may be replaced
    remote.target_path = "/mnt/other"
    session.flush()
    assert active_remotes(session).running_slugs == ("usb",)
    assert mark_unavailable(session, "usb", "timeout")
    assert mark_ok(session, "usb")


def test_unknown_remote_is_left_alone(session: Session) -> None:
    assert not mark_unavailable(session, "nope", "x")
    assert not mark_misconfigured(session, "nope", "x", None)
    assert get_state(session, "nope").state is State.ok


def _mark(factory: sessionmaker[Session], start: threading.Barrier, results: list[bool]) -> None:
    with factory() as s:
        s.execute(text("SELECT 1"))
        start.wait()
        results.append(mark_unavailable(s, "nextcloud", "down"))
        s.commit()


def test_newly_unavailable_is_reported_once_under_concurrency(
    engine: Engine, session: Session
) -> None:
    make_remote(session, "nextcloud")
    session.commit()
    factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
    for _ in range(10):
        start = threading.Barrier(3, timeout=10)
        results: list[bool] = []
        threads = [threading.Thread(target=_mark, args=(factory, start, results)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(results) == [False, False, True]
        assert mark_ok(session, "nextcloud")
        session.commit()
