"""What follows when a remote is pointed elsewhere (its destination changes).

Success rows count only at the remote's current destination (``uploader.remotes.destination``), so
after a change every recording still on disk is uploaded again to the new place, and the
recordings the Janitor already deleted remain only at the old place: they stay flagged (a flag
is never taken back, the audio may be gone), and ``status`` names them.

An operator who moved the archive along (copied the old folder to the new one) says so with
``remotes set … --moved``: :func:`carry_over` then writes, for every success at the old place,
an audited success at the new place with ``verified_by = 'moved'`` (the operator's word, not a
worker's check), so nothing is uploaded again.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session

from uploader import path_builder

log = structlog.get_logger(__name__)

#: how many recording ids ``status`` and ``remotes set`` name at most
SAMPLE_IDS = 20


@dataclass(frozen=True)
class ChangeEffects:
    """What a destination change means for the recordings uploaded to the old place."""

    upload_again: int  # still on disk: uploaded again to the new place
    only_at_old_place: int  # audio already deleted: remain only at the old place
    sample_only_at_old_place: tuple[int, ...]


_EFFECTS = text(
    f"""
    SELECT count(*) FILTER (WHERE NOT r.local_deleted) AS again,
           count(*) FILTER (WHERE r.local_deleted) AS only_old,
           (array_agg(r.id ORDER BY r.id) FILTER (WHERE r.local_deleted))[1:{SAMPLE_IDS}]
               AS sample
    FROM recordings r
    WHERE EXISTS (SELECT 1 FROM uploads u WHERE u.recording_id = r.id
                  AND u.remote_slug = :slug AND u.success AND u.destination = :old)
      AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.recording_id = r.id
                      AND u.remote_slug = :slug AND u.success AND u.destination = :new)
    """
)
_CARRY_OVER = text(
    """
    WITH moved AS (
        INSERT INTO uploads (recording_id, remote_slug, attempt_at, filename, size, success,
                             error_message, remote_path, duration_s, error_kind, attempt_key,
                             destination, verified_by, content_md5)
        SELECT u.recording_id, u.remote_slug, now(), u.filename, u.size, true, NULL,
               CASE WHEN left(u.remote_path, length(:old_prefix)) = :old_prefix
                    THEN :new_prefix || substr(u.remote_path, length(:old_prefix) + 1)
                    ELSE u.remote_path END,
               0, 'none', 'moved:' || :slug || ':' || :new || ':' || u.recording_id,
               :new, 'moved', u.content_md5
        FROM uploads u
        WHERE u.remote_slug = :slug AND u.success AND u.destination = :old
        ON CONFLICT DO NOTHING
        RETURNING recording_id, remote_path
    )
    SELECT recording_id, remote_path FROM moved
    """
)
_CLAIM = text(
    """
    INSERT INTO remote_objects (destination, path_key, recording_id, remote_slug, remote_path)
    SELECT :new, k.key, k.rid, :slug, k.path
    FROM unnest(CAST(:keys AS text[]), CAST(:rids AS bigint[]), CAST(:paths AS text[]))
         AS k(key, rid, path)
    ON CONFLICT DO NOTHING
    """
)
# flagged recordings that some required remote does not hold at its current destination; only
# for remotes pointed elsewhere since their cursor was made (remote_cursor.retargeted_at)
_STRANDED = text(
    f"""
    SELECT count(*) AS n,
           (array_agg(r.id ORDER BY r.id))[1:{SAMPLE_IDS}] AS sample
    FROM recordings r
    WHERE r.uploaded AND r.local_deleted
      AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.recording_id = r.id
                      AND u.remote_slug = :slug AND u.success AND u.destination = :dest)
      AND EXISTS (SELECT 1 FROM uploads u WHERE u.recording_id = r.id
                  AND u.remote_slug = :slug AND u.success)
    """
)
_RETARGETED = text("SELECT retargeted_at IS NOT NULL FROM remote_cursor WHERE remote_slug = :slug")


def change_effects(session: Session, slug: str, old: str, new: str) -> ChangeEffects:
    """What pointing ``slug`` from destination ``old`` to ``new`` means (read only)."""
    if old == new:
        return ChangeEffects(0, 0, ())
    row = session.execute(_EFFECTS, {"slug": slug, "old": old, "new": new}).one()
    return ChangeEffects(int(row.again), int(row.only_old), tuple(row.sample or ()))


def carry_over(
    session: Session,
    slug: str,
    *,
    old: str,
    new: str,
    old_target: str | None,
    new_target: str | None,
) -> int:
    """Record every success at ``old`` as a success at ``new`` (the operator moved the data
    along): audited rows with ``verified_by = 'moved'``, paths under the new target path, and
    the objects claimed there. Returns how many recordings were carried over."""
    params = {
        "slug": slug,
        "old": old,
        "new": new,
        "old_prefix": path_builder.target_prefix(old_target),
        "new_prefix": path_builder.target_prefix(new_target),
    }
    moved = session.execute(_CARRY_OVER, params).all()
    paths = [row for row in moved if row.remote_path]  # a SEED-ERA row may have no path
    if paths:
        session.execute(
            _CLAIM,
            {
                "new": new,
                "slug": slug,
                "keys": [path_builder.object_key(row.remote_path) for row in paths],
                "rids": [row.recording_id for row in paths],
                "paths": [row.remote_path for row in paths],
            },
        )
    log.warning("remote.destination_carried_over", remote=slug, recordings=len(moved))
    return len(moved)


def stranded(session: Session, slug: str, dest: str) -> tuple[int, tuple[int, ...]]:
    """Flagged recordings whose audio is deleted and that remote ``slug`` holds only at an
    earlier destination: (how many, the first ids). Zero at once for a remote never pointed
    elsewhere."""
    if not session.execute(_RETARGETED, {"slug": slug}).scalar():
        return 0, ()
    row = session.execute(_STRANDED, {"slug": slug, "dest": dest}).one()
    return int(row.n), tuple(row.sample or ())
