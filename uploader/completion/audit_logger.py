"""The audit (``uploads``, insert-only) and the completion rule - the only code that knows it.

A recording is complete when every *required* remote (``uploader.completion.active``) has a success
row for it *at the remote's current destination* (``uploader.remotes.destination``: a remote pointed
elsewhere has not got what it held at its old place); then ``recordings.uploaded = true,
uploaded_at = clock_timestamp()``, the one signal the Janitor trusts before deleting audio. An
empty required set completes nothing, ever. A remote added later does not un-complete a
recording (the seed's rule), nor does a remote pointed elsewhere (the Janitor may have acted).

Callers: the pipeline's audit step and errback (:func:`log_upload_attempt`, in the same
transaction that ends the lease), the dispatcher when the required set changes
(:func:`recompute_uploaded`), and the Janitor's check (:func:`is_deletable`,
:func:`list_deletable`). Nothing here commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session

from uploader.completion.active import required_destinations
from uploader.errors import SettingsInvalid
from uploader.redact import redact
from uploader.remotes.destination import current_one as current_destination

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AuditResult:
    inserted: bool  # a row was added (False: a redelivered success or a repeated attempt_key)
    recording_complete: bool  # the recording is flagged uploaded after this call


@dataclass(frozen=True)
class Deletable:
    """A recording whose audio the Janitor may delete: every required remote has it."""

    recording_id: int
    file_raw: str
    time: datetime


# FOR NO KEY UPDATE, not FOR UPDATE: it serialises the success writers of one recording just
# the same, but does not block the FOR KEY SHARE that every other INSERT INTO uploads takes on
# the recording through the foreign key (failure rows of other remotes would queue behind it).
_LOCK_RECORDING = text("SELECT uploaded FROM recordings WHERE id = :rid FOR NO KEY UPDATE")
_READ_UPLOADED = text("SELECT uploaded FROM recordings WHERE id = :rid")

# ON CONFLICT DO NOTHING without a target skips either unique index: uq_uploads_success_pair
# (one success per pair) and uq_uploads_attempt_key (one row per attempt). The NOT EXISTS
# keeps the success rule on a SEED-ERA database where uq_uploads_success_pair could not be
# made unique; under the recording lock it cannot race.
_INSERT = text(
    """
    INSERT INTO uploads (recording_id, remote_slug, attempt_at, filename, size, success,
                         error_message, remote_path, duration_s, error_kind, attempt_key,
                         destination, verified_by, content_md5)
    SELECT :rid, :slug, now(), :filename, :size, :success,
           :error, :remote_path, :duration_s, :error_kind, :attempt_key,
           :destination, :verified_by, :content_md5
    WHERE NOT (:success AND EXISTS (SELECT 1 FROM uploads u WHERE u.recording_id = :rid
                                    AND u.remote_slug = :slug AND u.success
                                    AND u.destination = :destination))
    ON CONFLICT DO NOTHING
    RETURNING id
    """
)

# "no required remote lacks a success row at its current destination": one probe of
# uq_uploads_success_pair (recording_id, remote_slug, destination) per remote
_ALL_REQUIRED_HAVE_IT = """
    NOT EXISTS (
        SELECT 1 FROM unnest(CAST(:required AS text[]), CAST(:destinations AS text[]))
             AS req(slug, destination)
        WHERE NOT EXISTS (SELECT 1 FROM uploads u
                          WHERE u.recording_id = r.id AND u.remote_slug = req.slug
                            AND u.destination = req.destination AND u.success))
"""
# uploaded_at is the clock when the flag is set, not now(): now() is when this transaction
# began, and a transaction that began before another remote's audit (then waited for the
# recording lock) would date the flag before that remote's success row - "flagged before
# every remote had it", to anyone who reads the two timestamps.
_FLAGGED_AT = "clock_timestamp()"
_COMPLETE_ONE = text(
    f"""
    UPDATE recordings r SET uploaded = true, uploaded_at = {_FLAGGED_AT}
    WHERE r.id = :rid AND NOT r.uploaded AND {_ALL_REQUIRED_HAVE_IT}
    RETURNING r.id
    """
)
# Only recordings not yet uploaded and still on disk: the partial index
# ix_recordings_upload_pending (time) WHERE uploaded = false AND local_deleted = false holds
# exactly those, so the sweep's cost follows the backlog, not the million done rows.
_COMPLETE_ALL = text(
    f"""
    UPDATE recordings r SET uploaded = true, uploaded_at = {_FLAGGED_AT}
    WHERE NOT r.uploaded AND NOT r.local_deleted AND {_ALL_REQUIRED_HAVE_IT}
    RETURNING r.id
    """
)
_DELETABLE = text(
    """
    SELECT r.id, r.file_raw, r.time FROM recordings r
    WHERE r.uploaded AND NOT r.local_deleted
    ORDER BY r.time, r.id
    LIMIT :limit
    """
)


def log_upload_attempt(
    session: Session,
    recording_id: int,
    remote_slug: str,
    filename: str,
    size: int,
    success: bool,
    error: str | None,
    *,
    duration_s: float | None = None,
    remote_path: str | None = None,
    error_kind: str | None = None,
    attempt_key: str | None = None,
    destination: str | None = None,
    verified_by: str | None = None,
    content_md5: str | None = None,
) -> AuditResult:
    """Insert one ``uploads`` row (``attempt_at`` = the database's ``now()``); on success,
    flag the recording when every required remote now has a success row (``uploaded_at``
    = the database's clock then, never before any success row's ``attempt_at``).

    A success row records the ``destination`` it was verified at (default: the remote's
    current one) and what proved it (``verified_by``: ``md5``, ``sha1``, ``size`` or
    ``moved``); the pipeline writes one only from what ``uploader.ledger.evidence`` recorded, never
    from a message.

    Idempotent: a redelivered success adds no second success row (it still re-checks
    completion), and a failure repeated with the same ``attempt_key`` adds no second row.
    ``error`` passes through ``uploader.redact``. Flushes, never commits: the caller's
    transaction also ends the lease. Raises ``LookupError`` for an unknown recording.
    """
    session.flush()  # the caller's pending ORM rows (a recording made in this session)
    # the lock is taken before anything else, so the completion check below runs after any
    # other remote's success for this recording has committed (see _complete_if_done)
    locked = session.execute(_LOCK_RECORDING, {"rid": recording_id}).first() if success else None
    if success and locked is None:
        raise LookupError(f"recording {recording_id} does not exist")
    if success and destination is None:
        destination = current_destination(session, remote_slug)
    row_id = session.execute(
        _INSERT,
        {
            "rid": recording_id,
            "slug": remote_slug,
            "filename": filename,
            "size": size,
            "success": success,
            "error": redact(error) if error is not None else None,
            "remote_path": remote_path,
            "duration_s": duration_s,
            "error_kind": error_kind,
            "attempt_key": attempt_key,
            "destination": destination,
            "verified_by": verified_by,
            "content_md5": content_md5,
        },
    ).scalar()
    inserted = row_id is not None
    if not success:
        uploaded = session.execute(_READ_UPLOADED, {"rid": recording_id}).scalar()
        return AuditResult(inserted, bool(uploaded))
    already = bool(locked is not None and locked.uploaded)
    return AuditResult(inserted, already or _complete_if_done(session, recording_id))


def recompute_uploaded(session: Session) -> int:
    """Flag every recording that is complete under the current required set; returns how
    many. For the dispatcher when the required set shrinks (a remote deactivated, the cap
    lowered). One set-based UPDATE over the not-yet-uploaded recordings only.

    Holds the row locks of the recordings it flags until the caller commits: commit soon.
    """
    required = _required(session)
    if not required:
        return 0
    flagged = len(session.execute(_COMPLETE_ALL, _required_params(required)).all())
    if flagged:
        log.info("recording.completed_by_sweep", count=flagged, required=_slugs(required))
    return flagged


def is_deletable(session: Session, recording_id: int) -> bool:
    """The Janitor's check: only a recording flagged ``uploaded`` may lose its audio."""
    return bool(session.execute(_READ_UPLOADED, {"rid": recording_id}).scalar())


def list_deletable(session: Session, limit: int) -> list[Deletable]:
    """Uploaded recordings still on disk, oldest first (what the Janitor may delete next)."""
    return [Deletable(*row) for row in session.execute(_DELETABLE, {"limit": limit})]


def _complete_if_done(session: Session, recording_id: int) -> bool:
    """Under the recording lock, which read it not ``uploaded`` yet: set ``uploaded`` if
    every required remote has it.

    The lock makes two remotes' audits of one recording run this one after the other, and
    each statement sees what committed before it (READ COMMITTED), so the later one sees both
    success rows: a recording whose last two remotes finish at the same instant is flagged.
    """
    required = _required(session)
    if not required:
        return False
    params = {"rid": recording_id, **_required_params(required)}
    if session.execute(_COMPLETE_ONE, params).first() is None:
        return False
    log.info("recording.completed", recording_id=recording_id, required=_slugs(required))
    return True


def _required(session: Session) -> tuple[tuple[str, str], ...]:
    """The required remotes and their current destinations, or none when the settings
    cannot be read: then nothing is flagged now (the safe side) and the dispatcher's sweep
    flags it once they are fixed."""
    try:
        return required_destinations(session)
    except SettingsInvalid as exc:
        log.error("recording.completion_skipped", reason=str(exc))
        return ()


def _required_params(required: tuple[tuple[str, str], ...]) -> dict[str, list[str]]:
    return {"required": _slugs(required), "destinations": [d for _, d in required]}


def _slugs(required: tuple[tuple[str, str], ...]) -> list[str]:
    return [slug for slug, _ in required]
