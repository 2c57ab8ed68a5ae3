"""Success is per destination, proven by the worker, and no two recordings share an object.

- ``uploads``: ``destination`` (the fingerprint of where the bytes were verified,
  ``uploader.remotes.destination``), ``verified_by`` (``md5``, ``sha1``, ``size`` or ``moved``) and
  ``content_md5`` (the FLAC's md5). ``uq_uploads_success_pair`` becomes one success per
  (recording, remote, destination): a retargeted remote gets a new success row at its new
  place, and the completion rule counts only those. ``coalesce(destination, '')``: a row
  written without one (by hand, or an older writer) is still one per pair, not exempt as NULL.
- ``pair_state``: what the encode step recorded (``flac_*``) and what the upload step
  verified (``verified_*``), each under the lease token that wrote it. The audit step writes
  a success row only from these, never from its message.
- ``uploads.remote_slug`` loses its foreign key to ``storage_remotes``: the audit outlives
  the remotes it names, so a remote that only ever failed can be removed and its failure rows
  stay readable.
- ``remote_objects``: which recording owns which object path at which destination; a second
  recording mapped to the same path gets ``<stem>~<id>.flac`` instead of overwriting.
- ``remote_cursor.destination``: the destination the cursor was walked for; when the remote
  is pointed elsewhere the walk starts again, and ``retargeted_at`` says when (``status`` then
  looks for recordings flagged before that are not at the new place).

- ``remote_status.failures`` / ``probe_at``: the per-remote circuit breaker (failed attempts
  in a row, and when the next attempt may be made: ``uploader/remotes/state.py``).

Existing success rows are taken to be at their remote's current destination (the uploader
before this revision never changed it), and their paths are registered in
``remote_objects``.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from uploader.remotes.destination import destination_of
from uploader.path_builder import object_key

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    for column, sql_type in (
        ("destination", "TEXT"),
        ("verified_by", "TEXT"),
        ("content_md5", "TEXT"),
    ):
        op.execute(f"ALTER TABLE uploads ADD COLUMN IF NOT EXISTS {column} {sql_type}")
    for column, sql_type in (
        ("flac_token", "UUID"),
        ("flac_size", "BIGINT"),
        ("flac_md5", "TEXT"),
        ("verified_token", "UUID"),
        ("verified_path", "TEXT"),
        ("verified_size", "BIGINT"),
        ("verified_by", "TEXT"),
        ("verified_destination", "TEXT"),
    ):
        op.execute(f"ALTER TABLE pair_state ADD COLUMN IF NOT EXISTS {column} {sql_type}")
    op.execute("ALTER TABLE remote_status ADD COLUMN IF NOT EXISTS probe_at TIMESTAMPTZ")
    op.execute(
        "ALTER TABLE remote_status ADD COLUMN IF NOT EXISTS failures INTEGER NOT NULL DEFAULT 0"
    )
    # a remote marked before the breaker existed is probed a minute after the upgrade
    op.execute(
        "UPDATE remote_status SET probe_at = now() + interval '1 minute' WHERE state <> 'ok'"
    )
    op.execute("ALTER TABLE remote_cursor ADD COLUMN IF NOT EXISTS destination TEXT")
    op.execute("ALTER TABLE remote_cursor ADD COLUMN IF NOT EXISTS retargeted_at TIMESTAMPTZ")

    for slug, rtype, config, target in bind.execute(
        sa.text("SELECT slug, type, config, target_path FROM storage_remotes")
    ):
        dest = destination_of(rtype, config or {}, target)
        bind.execute(
            sa.text(
                "UPDATE uploads SET destination = :dest "
                "WHERE remote_slug = :slug AND success AND destination IS NULL"
            ),
            {"dest": dest, "slug": slug},
        )
        bind.execute(
            sa.text("UPDATE remote_cursor SET destination = :dest WHERE remote_slug = :slug"),
            {"dest": dest, "slug": slug},
        )

    # the audit outlives the remotes it names: a remote that only ever failed (a typo, a
    # wrong URL) may be removed while its failure rows stay readable (`remotes remove`)
    for (name,) in bind.execute(
        sa.text(
            "SELECT conname FROM pg_constraint WHERE contype = 'f' "
            "AND conrelid = 'uploads'::regclass AND confrelid = 'storage_remotes'::regclass"
        )
    ).all():
        op.execute(f'ALTER TABLE uploads DROP CONSTRAINT "{name}"')

    duplicates = bind.execute(
        sa.text(
            "SELECT 1 FROM uploads WHERE success "
            "GROUP BY recording_id, remote_slug, destination HAVING count(*) > 1 LIMIT 1"
        )
    ).first()
    unique = "" if duplicates else "UNIQUE "
    op.execute("DROP INDEX IF EXISTS uq_uploads_success_pair")
    op.execute(
        f"CREATE {unique}INDEX uq_uploads_success_pair "
        "ON uploads (recording_id, remote_slug, (coalesce(destination, ''))) WHERE success"
    )

    op.execute(
        """
        CREATE TABLE IF NOT EXISTS remote_objects (
            destination TEXT NOT NULL,
            path_key TEXT NOT NULL,
            recording_id BIGINT NOT NULL REFERENCES recordings(id),
            remote_slug TEXT NOT NULL,
            remote_path TEXT NOT NULL,
            claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (destination, path_key)
        )"""
    )
    op.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS uq_remote_objects_recording "
        "ON remote_objects (recording_id, destination)"
    )
    # the objects already written: the first success row per path owns it (keys computed by
    # path_builder, the one place that knows them; in batches, a million rows take seconds)
    rows = bind.execute(
        sa.text(
            "SELECT destination, remote_path, recording_id, remote_slug, attempt_at "
            "FROM uploads WHERE success AND destination IS NOT NULL "
            "AND remote_path IS NOT NULL ORDER BY id"
        )
    ).fetchall()
    for start in range(0, len(rows), 10_000):
        batch = rows[start : start + 10_000]
        bind.execute(
            sa.text(
                """
                INSERT INTO remote_objects (destination, path_key, recording_id, remote_slug,
                                            remote_path, claimed_at)
                SELECT * FROM unnest(CAST(:dest AS text[]), CAST(:key AS text[]),
                                     CAST(:rid AS bigint[]), CAST(:slug AS text[]),
                                     CAST(:path AS text[]), CAST(:at AS timestamptz[]))
                ON CONFLICT DO NOTHING
                """
            ),
            {
                "dest": [r.destination for r in batch],
                "key": [object_key(r.remote_path) for r in batch],
                "rid": [r.recording_id for r in batch],
                "slug": [r.remote_slug for r in batch],
                "path": [r.remote_path for r in batch],
                "at": [r.attempt_at for r in batch],
            },
        )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE uploads ADD CONSTRAINT uploads_remote_slug_fkey FOREIGN KEY (remote_slug) "
        "REFERENCES storage_remotes(slug) NOT VALID"
    )
    op.execute("DROP TABLE IF EXISTS remote_objects")
    op.execute("ALTER TABLE remote_status DROP COLUMN IF EXISTS probe_at")
    op.execute("ALTER TABLE remote_status DROP COLUMN IF EXISTS failures")
    op.execute("ALTER TABLE remote_cursor DROP COLUMN IF EXISTS destination")
    op.execute("ALTER TABLE remote_cursor DROP COLUMN IF EXISTS retargeted_at")
    for column in (
        "flac_token",
        "flac_size",
        "flac_md5",
        "verified_token",
        "verified_path",
        "verified_size",
        "verified_by",
        "verified_destination",
    ):
        op.execute(f"ALTER TABLE pair_state DROP COLUMN IF EXISTS {column}")
    op.execute("DROP INDEX IF EXISTS uq_uploads_success_pair")
    op.execute(
        "CREATE INDEX uq_uploads_success_pair ON uploads (recording_id, remote_slug) WHERE success"
    )
    for column in ("destination", "verified_by", "content_md5"):
        op.execute(f"ALTER TABLE uploads DROP COLUMN IF EXISTS {column}")
