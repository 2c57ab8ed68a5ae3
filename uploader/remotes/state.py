"""The remote availability marker (table ``remote_status``): ``ok``, ``unavailable`` or
``misconfigured``, with the time it entered that state, and the per-remote circuit breaker.

The breaker bounds the attempts at a failing remote, whatever the failure kind (an operator's
mistake must not get the station banned by Nextcloud's brute-force protection or fail2ban):

- ``failures`` counts failed attempts at the remote in a row; a success resets it.
- **unavailable** (connection-level, or :data:`TRIP_AFTER` failed attempts in a row of any
  kind): one probe pair at a time, and the next attempt not before ``probe_at`` — spaced by
  :func:`unavailable_backoff_s` (10, 20, 40, then 60 s: at most 6 attempts a minute).
- **misconfigured** (credentials refused, a missing bucket, an undecryptable secret): no work
  until ``probe_at``, then one probe pair, at growing intervals (:func:`misconfigured_probe_s`:
  1, 5, 15, then every 60 min), so a fix on the server's side heals by itself. A change of the
  remote's config, or ``remotes probe SLUG``, probes at once.

Workers set it from what rclone tells them; the dispatcher reads it (an unavailable remote gets
one probe pair), so do the heartbeat and ``status``, and ``uploader.completion.active`` reads the
``misconfigured`` mark (valid while the remote's config fingerprint is the one it was set
under). It lives in the database so the prefork parent, its child and the dispatcher agree.
No row means ``ok``. Details are redacted: they quote rclone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session

from uploader import log_limiter
from uploader.redact import redact
from uploader.remotes.config import config_fingerprint

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
    failures: int = 0  # failed attempts in a row
    probe_at: datetime | None = None  # no attempt before this (None: at once)
    probe_due: bool = True  # probe_at has passed (the database's clock)


#: failed attempts in a row (any kind) after which a remote counts as unavailable
TRIP_AFTER = 5
_UNAVAILABLE_ENV = "SILVASONIC_UNAVAILABLE_BACKOFF_S"
_MISCONFIGURED_ENV = "SILVASONIC_MISCONFIGURED_PROBE_S"
_DEFAULT_UNAVAILABLE = (10.0, 20.0, 40.0, 60.0)
_DEFAULT_MISCONFIGURED = (60.0, 300.0, 900.0, 3600.0)


def _steps(env: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        steps = tuple(float(x) for x in raw.split(","))
    except ValueError:
        log.warning("remote.bad_backoff_setting", variable=env)
        return default
    return steps if steps and all(x > 0 for x in steps) else default


def unavailable_backoff_s(failures: int) -> float:
    """Seconds before the next attempt at an unavailable remote after ``failures`` in a row
    (``SILVASONIC_UNAVAILABLE_BACKOFF_S``, default 10,20,40,60: at most 6 attempts a minute)."""
    steps = _steps(_UNAVAILABLE_ENV, _DEFAULT_UNAVAILABLE)
    return steps[min(max(failures, 1), len(steps)) - 1]


def misconfigured_probe_s(marks: int) -> float:
    """Seconds before a misconfigured remote is probed again after its ``marks``-th mark in a
    row (``SILVASONIC_MISCONFIGURED_PROBE_S``, default 60,300,900,3600: 1, 5, 15, 60 min)."""
    steps = _steps(_MISCONFIGURED_ENV, _DEFAULT_MISCONFIGURED)
    return steps[min(max(marks, 1), len(steps)) - 1]


# Make sure a row exists (only for a remote that exists), then lock it: every change below is
# read-modify-write under that row lock, so "newly unavailable" is reported exactly once.
_ENSURE = text(
    "INSERT INTO remote_status (remote_slug) SELECT slug FROM storage_remotes WHERE slug = :slug "
    "ON CONFLICT (remote_slug) DO NOTHING"
)
_LOCK = text(
    "SELECT state, config_fingerprint FROM remote_status WHERE remote_slug = :slug FOR UPDATE"
)
#: the columns :func:`from_row` reads, for a statement of ``remote_status`` aliased ``st``
STATE_COLUMNS = (
    "st.state, st.since, st.detail, st.failures, st.probe_at, "
    "coalesce(st.probe_at <= now(), true) AS probe_due"
)
_READ = text(f"SELECT {STATE_COLUMNS} FROM remote_status st WHERE st.remote_slug = :slug")
_SET = text(
    """
    UPDATE remote_status
    SET state = :state, detail = :detail, config_fingerprint = :fingerprint, updated_at = now(),
        since = CASE WHEN :same THEN since ELSE now() END,
        failures = CASE WHEN :state = 'ok' THEN 0 WHEN :reset THEN 1 ELSE failures + 1 END,
        probe_at = CASE WHEN :state = 'ok' THEN NULL
                        ELSE now() + make_interval(secs => :wait_s) END
    WHERE remote_slug = :slug
    RETURNING failures
    """
)
_COUNT_FAILURE = text(
    """
    UPDATE remote_status SET failures = failures + 1, updated_at = now()
    WHERE remote_slug = :slug
    RETURNING state, failures
    """
)
_PROBE_NOW = text(
    "UPDATE remote_status SET probe_at = now(), updated_at = now() WHERE remote_slug = :slug "
    "AND state <> 'ok' RETURNING 1"
)
_REMOTE = text("SELECT type, config, target_path FROM storage_remotes WHERE slug = :slug")


def get_state(session: Session, slug: str) -> RemoteState:
    return from_row(session.execute(_READ, {"slug": slug}).first())


def from_row(row: Any) -> RemoteState:
    """A state read with :data:`STATE_COLUMNS` (a LEFT JOIN's NULLs, or no row: ok)."""
    if row is None or row.state is None:
        return RemoteState(State.ok, None)
    return RemoteState(
        State(row.state),
        row.since,
        row.detail,
        int(row.failures or 0),
        row.probe_at,
        bool(row.probe_due),
    )


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
    failures = _failures(session, slug)
    _set(session, slug, State.unavailable, redact(reason), None,
         same=state == State.unavailable, wait_s=unavailable_backoff_s(failures + 1))  # fmt: skip
    if state != State.unavailable:
        log.warning("remote.unavailable", remote=slug, reason=redact(reason))
        return True
    return False


def mark_ok(session: Session, slug: str) -> bool:
    """A success: True when the remote recovered (it was marked unavailable or
    misconfigured); the breaker's count starts again either way."""
    row = session.execute(_READ, {"slug": slug}).first()
    if row is None or (row.state == State.ok and not row.failures):
        return False  # the common case: no lock, no write
    previous = _lock(session, slug)
    if previous is None:
        return False
    _set(session, slug, State.ok, None, None, same=previous[0] == State.ok, wait_s=0.0)
    log_limiter.reset(slug)
    if previous[0] == State.ok:
        return False
    log.info("remote.recovered", remote=slug, previous=previous[0])
    return True


def record_failure(session: Session, slug: str, reason: str) -> bool:
    """Count a failed attempt at the remote that marked nothing (a file-level or unknown
    failure); the :data:`TRIP_AFTER`-th in a row marks it unavailable. True when it did."""
    session.execute(_ENSURE, {"slug": slug})
    row = session.execute(_COUNT_FAILURE, {"slug": slug}).first()
    if row is None or row.state != State.ok or row.failures < TRIP_AFTER:
        return False
    return mark_unavailable(
        session, slug, f"{row.failures} failed attempts in a row; the last: {redact(reason)}"
    )


def request_probe(session: Session, slug: str) -> bool:
    """Let a remote that is not ok be tried now (``remotes probe``); False when it is ok."""
    return session.execute(_PROBE_NOW, {"slug": slug}).first() is not None


def mark_misconfigured(session: Session, slug: str, reason: str, fingerprint: str | None) -> bool:
    """Mark the remote misconfigured under its config ``fingerprint``
    (``uploader.remotes.config.config_fingerprint``); the mark lapses once the config changes.
    True when this is news (not already misconfigured under the same fingerprint)."""
    previous = _lock(session, slug)
    if previous is None:
        return False
    same = previous[0] == State.misconfigured and previous[1] == fingerprint
    marks = _failures(session, slug) + 1 if same else 1  # this mark's number in a row
    wait_s = misconfigured_probe_s(marks)
    _set(session, slug, State.misconfigured, redact(reason), fingerprint,
         same=same, wait_s=wait_s, reset=not same)  # fmt: skip
    if not same:  # a repeated mark only moves the next probe: the news was logged already
        log.error("remote.misconfigured", remote=slug, reason=redact(reason),
                  next_probe_s=wait_s)  # fmt: skip
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
    wait_s: float,
    reset: bool = False,
) -> None:
    params = {"slug": slug, "state": str(state), "detail": detail, "fingerprint": fingerprint}
    session.execute(_SET, {**params, "same": same, "wait_s": wait_s, "reset": reset})


def _failures(session: Session, slug: str) -> int:
    value = session.execute(
        text("SELECT failures FROM remote_status WHERE remote_slug = :slug"), {"slug": slug}
    ).scalar()
    return int(value or 0)


def _fingerprint(session: Session, slug: str) -> str | None:
    row = session.execute(_REMOTE, {"slug": slug}).first()
    return None if row is None else config_fingerprint(row.type, row.config or {}, row.target_path)
