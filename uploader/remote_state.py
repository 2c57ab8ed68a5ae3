"""The remote availability marker (table ``remote_status``): ``ok``, ``unavailable`` or
``misconfigured``, with the time it entered that state.

Workers set it from what rclone tells them; the dispatcher reads it (an unavailable remote gets
one probe pair), so do the heartbeat and ``status``, and ``uploader.active`` reads the
``misconfigured`` mark (valid while the remote's config fingerprint is the one it was set
under). It lives in the database so the prefork parent, its child and the dispatcher agree.
No row means ``ok``. Details are redacted: they quote rclone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session

from uploader.redact import redact
from uploader.remotes import config_fingerprint

log = structlog.get_logger(__name__)


class State(StrEnum):
    ok = "ok"  # no known problem (or no row at all)
    unavailable = "unavailable"  # connection-level failures: retried, one probe pair at a time
    misconfigured = "misconfigured"  # config-level: an operator must fix the remote


@dataclass(frozen=True)
class RemoteState:
    state: State
    since: datetime | None  # None: never marked
    detail: str | None = None


# Make sure a row exists (only for a remote that exists), then lock it: every change below is
# read-modify-write under that row lock, so "newly unavailable" is reported exactly once.
_ENSURE = text(
    "INSERT INTO remote_status (remote_slug) SELECT slug FROM storage_remotes WHERE slug = :slug "
    "ON CONFLICT (remote_slug) DO NOTHING"
)
_LOCK = text(
    "SELECT state, config_fingerprint FROM remote_status WHERE remote_slug = :slug FOR UPDATE"
)
_READ = text("SELECT state, since, detail FROM remote_status WHERE remote_slug = :slug")
_SET = text(
    """
    UPDATE remote_status
    SET state = :state, detail = :detail, config_fingerprint = :fingerprint, updated_at = now(),
        since = CASE WHEN :same THEN since ELSE now() END
    WHERE remote_slug = :slug
    """
)
_REMOTE = text("SELECT type, config, target_path FROM storage_remotes WHERE slug = :slug")


def get_state(session: Session, slug: str) -> RemoteState:
    row = session.execute(_READ, {"slug": slug}).first()
    return from_row(None, None, None) if row is None else from_row(row.state, row.since, row.detail)


def from_row(state: str | None, since: datetime | None, detail: str | None) -> RemoteState:
    """A state read with ``remote_status``'s columns elsewhere (a LEFT JOIN: NULL is ok)."""
    if state is None:
        return RemoteState(State.ok, None)
    return RemoteState(State(state), since, detail)


def mark_unavailable(session: Session, slug: str, reason: str) -> bool:
    """True when the remote was not unavailable before (``since`` is kept while it stays so).

    A misconfigured mark that still matches the remote's config is left alone: it needs an
    operator, and is the stronger news.
    """
    previous = _lock(session, slug)
    if previous is None:
        return False
    state, fingerprint = previous
    if state == State.misconfigured and fingerprint in (None, _fingerprint(session, slug)):
        return False
    _set(session, slug, State.unavailable, redact(reason), None, same=state == State.unavailable)
    if state != State.unavailable:
        log.warning("remote.unavailable", remote=slug, reason=redact(reason))
        return True
    return False


def mark_ok(session: Session, slug: str) -> bool:
    """True when the remote recovered (it was marked unavailable or misconfigured)."""
    row = session.execute(_READ, {"slug": slug}).first()
    if row is None or row.state == State.ok:
        return False  # the common case: no lock, no write
    previous = _lock(session, slug)
    if previous is None or previous[0] == State.ok:
        return False
    _set(session, slug, State.ok, None, None, same=False)
    log.info("remote.recovered", remote=slug, previous=previous[0])
    return True


def mark_misconfigured(session: Session, slug: str, reason: str, fingerprint: str | None) -> bool:
    """Mark the remote misconfigured under its config ``fingerprint``
    (``uploader.remotes.config_fingerprint``); the mark lapses once the config changes.
    True when this is news (not already misconfigured under the same fingerprint)."""
    previous = _lock(session, slug)
    if previous is None:
        return False
    same = previous[0] == State.misconfigured and previous[1] == fingerprint
    _set(session, slug, State.misconfigured, redact(reason), fingerprint, same=same)
    if not same:
        log.error("remote.misconfigured", remote=slug, reason=redact(reason))
    return not same


def _lock(session: Session, slug: str) -> tuple[State, str | None] | None:
    session.execute(_ENSURE, {"slug": slug})
    row = session.execute(_LOCK, {"slug": slug}).first()
    return None if row is None else (State(row.state), row.config_fingerprint)


def _set(
    session: Session,
    slug: str,
    state: State,
    detail: str | None,
    fingerprint: str | None,
    *,
    same: bool,
) -> None:
    params = {"slug": slug, "state": str(state), "detail": detail, "fingerprint": fingerprint}
    session.execute(_SET, {**params, "same": same})


def _fingerprint(session: Session, slug: str) -> str | None:
    row = session.execute(_REMOTE, {"slug": slug}).first()
    return None if row is None else config_fingerprint(row.type, row.config or {}, row.target_path)
