"""Which recording owns which object at which destination: one object per recording per
destination, never shared (``remote_objects``).

Two recordings can map to one remote path: the same sensor and day, the same file name in
two folders of the workspace, or ``x.wav`` and ``x.WAV``. Uploading both there would leave
only the second one's audio while both got flagged. So before any transfer, the upload step
claims its path here, in the database: the first recording to claim a path owns it for good;
a later one gets ``path_builder.disambiguated`` (``<stem>~<id>.flac``). A recording's claim is
stable, so its retries, and the transfer started ahead, write the same object.

Nothing here commits: the caller commits before it transfers.
"""

from __future__ import annotations

import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session

from uploader import path_builder
from uploader.errors import FileRejected

log = structlog.get_logger(__name__)

# The recording's own claim at this destination if it has one, else a new claim of the path
# unless another recording owns it (ON CONFLICT DO NOTHING covers both unique indexes: the path
# and the recording's one object per destination, which a concurrent claim may have taken).
_CLAIM = text(
    """
    WITH mine AS (
        SELECT remote_path FROM remote_objects
        WHERE recording_id = :rid AND destination = :dest
    ), claimed AS (
        INSERT INTO remote_objects (destination, path_key, recording_id, remote_slug, remote_path)
        SELECT :dest, :key, :rid, :slug, :path WHERE NOT EXISTS (SELECT 1 FROM mine)
        ON CONFLICT DO NOTHING
        RETURNING remote_path
    )
    SELECT remote_path FROM mine UNION ALL SELECT remote_path FROM claimed
    """
)
_MINE = text(
    "SELECT remote_path FROM remote_objects WHERE recording_id = :rid AND destination = :dest"
)
_OWNER = text(
    "SELECT recording_id FROM remote_objects WHERE destination = :dest AND path_key = :key"
)


def claim_path(
    session: Session, *, recording_id: int, remote_slug: str, destination: str, usual_path: str
) -> str:
    """The object path this recording writes at ``destination``: its earlier claim, else
    ``usual_path`` when no other recording owns it, else the disambiguated name.

    Raises :class:`FileRejected` in the one case no name is free (the disambiguated name is
    owned too: only possible when rows were written by hand).
    """
    for path in (usual_path, path_builder.disambiguated(usual_path, recording_id)):
        params = {
            "rid": recording_id,
            "dest": destination,
            "slug": remote_slug,
            "path": path,
            "key": path_builder.object_key(path),
        }
        row = session.execute(_CLAIM, params).first()
        if row is None:  # a concurrent claim of this recording may have won: read it again
            row = session.execute(_MINE, params).first()
        if row is not None:
            if row.remote_path != usual_path:
                owner = session.execute(
                    _OWNER, {"dest": destination, "key": path_builder.object_key(usual_path)}
                ).scalar()
                log.info(
                    "object.path_collision",
                    remote=remote_slug,
                    recording_id=recording_id,
                    owner_recording_id=owner,
                    remote_path=row.remote_path,
                )
            return str(row.remote_path)
    raise FileRejected(
        f"both {usual_path!r} and its disambiguated name belong to other recordings at this "
        "remote; check remote_objects for hand-written rows",
        recording_id=recording_id,
    )
