"""Leases and parking of (recording, remote) pairs (docs/design/0003-leases.md).

A lease is a row of ``pair_state`` with a token and ``lease_until``: the dispatcher claims
pairs, every pipeline step checks or renews the token, and a step whose token no longer
matches does nothing. A lease whose message vanished simply expires and is claimed again.
``pair_state`` holds only leased, failed and parked pairs; pairs never tried are found by
``uploader.ledger.work_poller``'s walk, done pairs are deleted (:func:`finish`).

All times are the database's ``now()`` (the transaction's start), never this process's clock:
the dispatcher and the workers run on different machines' clocks in tests and in the field.
Nothing here commits; the caller's transaction decides (claim, then commit, then publish).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session

from uploader.ledger import work_poller
from uploader.ledger.work_poller import Source
from uploader.redact import redact
from uploader.remotes.destination import current_one as current_destination

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Lease:
    """A claimed pair; ``token`` travels with the task messages (never anything secret)."""

    recording_id: int
    remote_slug: str
    token: str
    lease_until: datetime


@dataclass(frozen=True)
class ParkedPair:
    """A pair whose file failed ``max_file_attempts`` times, for ``status``/``parked``."""

    recording_id: int
    remote_slug: str
    file_raw: str
    file_failures: int
    parked_until: datetime
    last_error: str | None


# One statement writes a claim: retry pairs are locked SKIP LOCKED and leased only if still
# free (a concurrent claimer that got there first keeps them); new pairs get their row unless a
# concurrent claimer inserted it first (ON CONFLICT); rows of done or deleted pairs are dropped.
_WRITE_CLAIM = text(
    """
    WITH retried AS (
        UPDATE pair_state p
        SET lease_token = v.token, lease_until = now() + make_interval(secs => :lease_s),
            parked_until = NULL, updated_at = now()
        FROM unnest(CAST(:retry_ids AS bigint[]), CAST(:retry_tokens AS uuid[]))
             AS v(recording_id, token)
        WHERE p.remote_slug = :slug AND p.recording_id = v.recording_id
          AND p.recording_id IN (
              SELECT q.recording_id FROM pair_state q
              WHERE q.remote_slug = :slug
                AND q.recording_id = ANY(CAST(:retry_ids AS bigint[]))
                AND (q.lease_until IS NULL OR q.lease_until <= now())
                AND (q.parked_until IS NULL OR q.parked_until <= now())
              FOR UPDATE SKIP LOCKED)
        RETURNING p.recording_id, p.lease_token, p.lease_until
    ), fresh AS (
        INSERT INTO pair_state (recording_id, remote_slug, lease_token, lease_until, updated_at)
        SELECT v.recording_id, :slug, v.token, now() + make_interval(secs => :lease_s), now()
        FROM unnest(CAST(:new_ids AS bigint[]), CAST(:new_tokens AS uuid[]))
             AS v(recording_id, token)
        ON CONFLICT (recording_id, remote_slug) DO NOTHING
        RETURNING recording_id, lease_token, lease_until
    ), dropped AS (
        DELETE FROM pair_state p
        WHERE p.remote_slug = :slug AND p.recording_id IN (
            SELECT q.recording_id FROM pair_state q
            WHERE q.remote_slug = :slug AND q.recording_id = ANY(CAST(:stale_ids AS bigint[]))
            FOR UPDATE SKIP LOCKED)
    )
    SELECT recording_id, lease_token, lease_until FROM retried
    UNION ALL
    SELECT recording_id, lease_token, lease_until FROM fresh
    """
)
_PAIR = "recording_id = :rid AND remote_slug = :slug"
_CHECK = text(
    f"SELECT 1 FROM pair_state WHERE {_PAIR} AND lease_token = :token AND lease_until > now()"
)
#: the renewal (see :func:`renew`), also run as the data-modifying CTE of a pipeline step's
#: first statement (``uploader.pipeline.steps.begin_step``), with :func:`renew_params`
RENEW_SQL = f"""
    UPDATE pair_state SET lease_until = now() + make_interval(secs => :lease_s), updated_at = now()
    WHERE {_PAIR} AND lease_token = :token
    RETURNING lease_until
"""
_RENEW = text(RENEW_SQL)
_RELEASE = text(
    f"""
    UPDATE pair_state SET lease_token = NULL, updated_at = now(),
        lease_until = CASE WHEN :cooldown_s > 0
                           THEN now() + make_interval(secs => :cooldown_s) END
    WHERE {_PAIR} AND lease_token = :token
    RETURNING 1
    """
)
# The guard keeps the cursor's promise (every id behind it is decided): a pair_state row goes
# only once the pair has its success row at the remote's current destination, or its
# recording is local_deleted.
_FINISH = """
    DELETE FROM pair_state p
    WHERE p.recording_id = :rid AND p.remote_slug = :slug {token}
      AND (EXISTS (SELECT 1 FROM uploads u WHERE u.recording_id = p.recording_id
                   AND u.remote_slug = p.remote_slug AND u.success
                   AND u.destination = :dest)
           OR EXISTS (SELECT 1 FROM recordings r WHERE r.id = p.recording_id AND r.local_deleted))
    RETURNING 1
"""
_HELD = "SELECT 1 FROM pair_state p WHERE p.recording_id = :rid AND p.remote_slug = :slug {token}"
_FAIL = text(
    f"""
    UPDATE pair_state
    SET file_failures = file_failures + 1,
        last_error = :error,
        lease_token = NULL, lease_until = NULL,
        parked_until = CASE WHEN file_failures + 1 >= :max_attempts
                            THEN now() + make_interval(hours => :window_h) END,
        updated_at = now()
    WHERE {_PAIR} AND lease_token = :token
    RETURNING file_failures, parked_until
    """
)
_UNPARK = """
    UPDATE pair_state SET parked_until = NULL, file_failures = 0, updated_at = now()
    WHERE remote_slug = :slug AND parked_until IS NOT NULL {ids}
    RETURNING recording_id
"""
_LIST_PARKED = """
    SELECT p.recording_id, p.remote_slug, r.file_raw, p.file_failures, p.parked_until,
           p.last_error
    FROM pair_state p JOIN recordings r ON r.id = p.recording_id
    WHERE p.parked_until IS NOT NULL {slug}
    ORDER BY p.remote_slug, p.parked_until, p.recording_id
    LIMIT :limit
"""
_COUNT_LEASES = text(
    "SELECT count(*) FROM pair_state WHERE remote_slug = :slug AND lease_until > now()"
)
_RELEASE_ALL = text(
    """
    UPDATE pair_state SET lease_token = NULL, lease_until = NULL, updated_at = now()
    WHERE remote_slug = :slug AND lease_token IS NOT NULL
    RETURNING recording_id
    """
)


def claim(session: Session, remote_slug: str, n: int, *, lease_s: float) -> list[Lease]:
    """Lease up to ``n`` pending pairs of this remote, oldest first, each with a fresh token.

    Concurrent claims get disjoint sets and never wait for each other (``SKIP LOCKED`` on the
    chosen retry rows and on the remote's cursor, ``ON CONFLICT DO NOTHING`` for new pairs). A pair
    whose park window has passed is leased once more with its failure count kept, so one more
    file failure parks it again. Retry rows found done or ``local_deleted`` are dropped on the
    way. Publish the tasks only after the caller has committed.
    """
    if lease_s <= 0:
        raise ValueError(f"lease_s must be positive, got {lease_s}")
    if n < 1:
        return []
    batch = work_poller.select_candidates(session, remote_slug, n, lock=True)
    retry_ids = [c.recording_id for c in batch.chosen if c.source is Source.retry]
    new_ids = [c.recording_id for c in batch.chosen if c.source is Source.new]
    params = {
        "slug": remote_slug,
        "lease_s": lease_s,
        "retry_ids": retry_ids,
        "retry_tokens": [str(uuid.uuid4()) for _ in retry_ids],
        "new_ids": new_ids,
        "new_tokens": [str(uuid.uuid4()) for _ in new_ids],
        "stale_ids": list(batch.stale),
    }
    granted: dict[int, tuple[str, datetime]] = {}
    if retry_ids or new_ids or batch.stale:
        for rid, token, until in session.execute(_WRITE_CLAIM, params):
            granted[rid] = (str(token), until)
    if batch.stale:
        log.info("pair.stale_dropped", remote=remote_slug, count=len(batch.stale))
    # every chosen new id now has a pair_state row, ours or a concurrent claimer's
    work_poller.advance_cursor(session, batch, taken_new=new_ids)

    leases = [
        Lease(c.recording_id, remote_slug, *granted[c.recording_id])
        for c in batch.chosen
        if c.recording_id in granted
    ]
    if leases:
        log.info(
            "pair.claimed",
            remote=remote_slug,
            count=len(leases),
            new=sum(1 for rid in new_ids if rid in granted),
            retried=len(leases) - sum(1 for rid in new_ids if rid in granted),
            park_expired=sum(1 for c in batch.chosen if c.park_expired),
        )
    return leases


def check(session: Session, recording_id: int, remote_slug: str, token: str) -> bool:
    """True while ``token`` holds the pair's lease and the lease has not expired."""
    params = _params(recording_id, remote_slug, token)
    return params is not None and session.execute(_CHECK, params).first() is not None


def renew(
    session: Session, recording_id: int, remote_slug: str, token: str, lease_s: float
) -> bool:
    """Extend the lease to ``now() + lease_s``; False for a stale token (do nothing then).

    A lease that expired but was not claimed again still carries this token and is renewed:
    nobody else holds the pair, and a claim replaces the token under a row lock, so at most
    one holder can ever renew.
    """
    params = renew_params(recording_id, remote_slug, token, lease_s)
    return params is not None and session.execute(_RENEW, params).first() is not None


def renew_params(
    recording_id: int, remote_slug: str, token: str, lease_s: float
) -> dict[str, Any] | None:
    """Bind parameters of ``RENEW_SQL``; None for a token that can match nothing."""
    params = _params(recording_id, remote_slug, token)
    return None if params is None else {**params, "lease_s": lease_s}


def release(
    session: Session, recording_id: int, remote_slug: str, token: str, *, cooldown_s: float = 0
) -> bool:
    """Drop the lease and keep the failure count: the pair is claimable again at once, or
    after ``cooldown_s`` (an unknown failure must not be retried in a tight loop).

    For connection-, config-level and unknown failures, which never count against the file.
    """
    params = _params(recording_id, remote_slug, token)
    released = (
        params is not None
        and session.execute(_RELEASE, {**params, "cooldown_s": cooldown_s}).first() is not None
    )
    if released:
        log.debug("pair.released", remote=remote_slug, recording_id=recording_id)
    return released


def finish(
    session: Session,
    recording_id: int,
    remote_slug: str,
    token: str | None,
    *,
    destination: str | None = None,
) -> bool:
    """Forget the pair: after its success row at the remote's current ``destination`` (read
    when not given) was written, or when its recording turned ``local_deleted``. With a
    ``token``, only its holder may; ``None`` forgets it regardless.

    Refuses (False, ``pair.finish_refused``) while the pair is neither done nor deleted - that
    row is the only trace of a pair behind the cursor - and then releases the lease instead.
    """
    params: dict[str, Any] | None = {"rid": recording_id, "slug": remote_slug}
    match_token = ""
    if token is not None:
        params = _params(recording_id, remote_slug, token)
        match_token = "AND p.lease_token = :token"
    if params is None:
        return False
    if destination is None:
        destination = current_destination(session, remote_slug)
    params["dest"] = destination
    if session.execute(text(_FINISH.format(token=match_token)), params).first() is not None:
        log.debug("pair.finished", remote=remote_slug, recording_id=recording_id)
        return True
    if session.execute(text(_HELD.format(token=match_token)), params).first() is not None:
        log.warning(
            "pair.finish_refused",
            remote=remote_slug,
            recording_id=recording_id,
            reason="no success row and not local_deleted",
        )
        if token is not None:
            release(session, recording_id, remote_slug, token)
    return False


def record_file_failure(
    session: Session,
    recording_id: int,
    remote_slug: str,
    token: str,
    error: str,
    *,
    max_file_attempts: int,
    park_window_hours: int,
) -> bool:
    """Count one file-level failure, store the (redacted) error, drop the lease; True when
    this failure parked the pair until ``now() + park_window_hours``.

    Only for file-level failures (docs/design/0007-failure-kinds.md): connection and config failures
    :func:`release` instead. A pair retried after its park window already has
    ``max_file_attempts`` failures, so one more parks it again. A stale token does nothing
    and returns False.
    """
    params = _params(recording_id, remote_slug, token)
    if params is None:
        return False
    row = session.execute(
        _FAIL,
        {
            **params,
            "error": redact(error),
            "max_attempts": max_file_attempts,
            "window_h": park_window_hours,
        },
    ).first()
    if row is None:
        log.info("pair.stale_token", remote=remote_slug, recording_id=recording_id,
                 step="record_file_failure")  # fmt: skip
        return False
    failures, parked_until = row
    if parked_until is not None:
        log.warning(
            "pair.parked",
            remote=remote_slug,
            recording_id=recording_id,
            file_failures=failures,
            parked_until=parked_until.isoformat(),
        )
        return True
    log.info("pair.failure_recorded", remote=remote_slug, recording_id=recording_id,
             file_failures=failures)  # fmt: skip
    return False


def unpark(session: Session, remote_slug: str, recording_ids: list[int] | None = None) -> int:
    """Clear parking (and the failure count) now, for all of the remote's parked pairs or the
    given ones; returns how many. ``parked retry`` calls this."""
    params: dict[str, Any] = {"slug": remote_slug}
    ids = ""
    if recording_ids is not None:
        ids = "AND recording_id = ANY(CAST(:ids AS bigint[]))"
        params["ids"] = list(recording_ids)
    count = len(session.execute(text(_UNPARK.format(ids=ids)), params).all())
    if count:
        log.info("pair.unparked", remote=remote_slug, count=count)
    return count


def list_parked(
    session: Session, remote_slug: str | None = None, *, limit: int = 1000
) -> list[ParkedPair]:
    """Parked pairs (including those whose window has passed and await their last try)."""
    params: dict[str, Any] = {"limit": limit}
    where = ""
    if remote_slug is not None:
        where, params["slug"] = "AND p.remote_slug = :slug", remote_slug
    rows = session.execute(text(_LIST_PARKED.format(slug=where)), params)
    return [ParkedPair(*row) for row in rows]


def count_leases(session: Session, remote_slug: str) -> int:
    """Live leases of this remote; a worker below half a batch asks for a top-up."""
    return int(session.execute(_COUNT_LEASES, {"slug": remote_slug}).scalar_one())


def release_all(session: Session, remote_slug: str) -> int:
    """Drop every lease of this remote (it went unavailable or was deactivated); the tasks
    still queued find their token stale and end without trying. Returns how many."""
    count = len(session.execute(_RELEASE_ALL, {"slug": remote_slug}).all())
    if count:
        log.info("pair.leases_released", remote=remote_slug, count=count)
    return count


def _params(recording_id: int, remote_slug: str, token: str) -> dict[str, Any] | None:
    """Bind parameters for one pair, or None when ``token`` is not a UUID (then it matches
    nothing; a malformed token from a message must not become a database error)."""
    try:
        parsed = uuid.UUID(str(token))
    except ValueError:
        return None
    return {"rid": recording_id, "slug": remote_slug, "token": str(parsed)}
